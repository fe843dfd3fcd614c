//===--- FeatureNetworkOps.swift - the few ops the feature network needs beyond TensorCore ---===//

import TensorCore

enum FeatureNetworkOps {
    /// In-place ReLU over all elements (NaN stays NaN, as in PyTorch).
    static func reluInPlace(_ x: Tensor) {
        Parallel.forEachChunk(x.count, minChunk: 1 << 16) { r in
            let p = x.data
            for i in r where p[i] < 0 { p[i] = 0 }
        }
    }

    /// Global average pooling: `[N, H, W, C] → [N, C]` (mean over H·W, accumulated in Double).
    static func globalAveragePool(_ x: Tensor) -> Tensor {
        let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let y = Tensor(shape: [n, c])
        var acc = [Double](repeating: 0, count: c)
        for b in 0..<n {
            for i in 0..<c { acc[i] = 0 }
            let base = x.data + b * h * w * c
            for p in 0..<(h * w) { for i in 0..<c { acc[i] += Double(base[p * c + i]) } }
            for i in 0..<c { y.data[b * c + i] = Float(acc[i] / Double(h * w)) }
        }
        return y
    }

    /// 2×2 max pooling, stride 2 (PyTorch `max_pool2d(2)`, floor): `[N, H, W, C] → [N, H/2, W/2, C]`.
    static func maxPool2x(_ x: Tensor) -> Tensor {
        Ops.pool2x(x) { a, b, c, d in
            // NaN-propagating like PyTorch: a NaN anywhere in the window wins.
            if a.isNaN || b.isNaN || c.isNaN || d.isNaN { return .nan }
            return Swift.max(Swift.max(a, b), Swift.max(c, d))
        }
    }

    /// PyTorch's `flatten(1)` of the NCHW equivalent: `[N, H, W, C] → [N, C·H·W]`, element
    /// `c·H·W + y·W + x`, so linear weights trained on NCHW tensors apply unchanged.
    static func flattenNCHW(_ x: Tensor) -> Tensor {
        let (n, h, w, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3])
        let y = Tensor(shape: [n, c * h * w])
        for b in 0..<n {
            let src = x.data + b * h * w * c, dst = y.data + b * c * h * w
            for p in 0..<(h * w) { for ch in 0..<c { dst[ch * h * w + p] = src[p * c + ch] } }
        }
        return y
    }
}
