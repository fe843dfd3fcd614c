import TensorCore

/// A tensor of uniform values in [offset − scale, offset + scale) from a fixed LCG (the same stream in every test).
func uniformTensor(_ shape: [Int], seed: UInt64, scale: Float = 1, offset: Float = 0) -> Tensor {
    var s = seed &* 6364136223846793005 &+ 1442695040888963407
    let t = Tensor(shape: shape)
    for i in 0..<t.count {
        s = s &* 6364136223846793005 &+ 1442695040888963407
        t.data[i] = (Float(s >> 40) / Float(1 << 24) * 2 - 1) * scale + offset
    }
    return t
}
