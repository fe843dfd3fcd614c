//===--- Matmul.swift - fp32 linear layers and batched matmul on oneDNN ----===//

import CDNNL

/// fp32 fully connected layer: `y = x · Wᵀ + b`.
///
/// - `x`: `[M, inFeatures]`; weights `[outFeatures, inFeatures]` (PyTorch layout); returns `[M, outFeatures]`.
/// One oneDNN matmul primitive per M, cached; weights reordered once.
public final class FloatLinear: @unchecked Sendable {
    public let inFeatures: Int
    public let outFeatures: Int
    public let weights: [Float]
    public let bias: [Float]?

    private struct Plan { let prim: DNNLPrimitive; let src, wei, dst: DNNLMemory; let bias: DNNLMemory? }
    private var plans: [Int: Plan] = [:]
    private var reordered: [(dnnl_memory_desc_t, AlignedBuffer)] = []
    private lazy var biasBuffer: AlignedBuffer? = bias.map(alignedCopy)

    public init(inFeatures: Int, outFeatures: Int, weights: [Float], bias: [Float]?) {
        precondition(weights.count == inFeatures * outFeatures, "linear weights: \(weights.count) for \(outFeatures)x\(inFeatures)")
        precondition(bias == nil || bias!.count == outFeatures, "linear bias size")
        self.inFeatures = inFeatures; self.outFeatures = outFeatures
        self.weights = weights; self.bias = bias
    }

    /// - Parameter x: `[M, inFeatures]` (or any shape whose last dimension is `inFeatures`).
    /// - Returns: same leading shape, last dimension `outFeatures`.
    public func forward(_ x: Tensor) -> Tensor {
        precondition(x.shape.last == inFeatures, "linear expects last dim \(inFeatures), got \(x.shape)")
        let m = x.count / inFeatures
        let plan = plans[m] ?? makePlan(m)
        let y = Tensor(uninitialized: Array(x.shape.dropLast()) + [outFeatures])
        plan.prim.executeWeightLayer(src: plan.src, x.data, weights: plan.wei, dst: plan.dst, y.data, bias: plan.bias)
        return y
    }

    private func makePlan(_ m: Int) -> Plan {
        var src = dnnlMD([m, inFeatures], dnnl_f32, tag: dnnl_ab)
        var wAny = dnnlMD([inFeatures, outFeatures], dnnl_f32, tag: dnnl_format_tag_any)
        var dst = dnnlMD([m, outFeatures], dnnl_f32, tag: dnnl_ab)
        var biasMD = dnnlMD([1, outFeatures], dnnl_f32, tag: dnnl_ab)
        var md = dnnl_matmul_desc_t()
        dnnlCheck(withUnsafePointer(to: &biasMD) { bp in
            dnnl_matmul_desc_init(&md, &src, &wAny, bias == nil ? nil : bp, &dst)
        }, "dnnl_matmul_desc_init")
        var pd: dnnl_primitive_desc_t? = nil
        dnnlCheck(dnnl_primitive_desc_create(&pd, &md, nil, DNNL.shared.engine, nil), "matmul primitive_desc_create")
        let prim = DNNLPrimitive(desc: pd!)
        var wmd = prim.queryMD(dnnl_query_weights_md)
        let wbuf: AlignedBuffer
        if let hit = reordered.first(where: { dnnlEqual($0.0, wmd) }) { wbuf = hit.1 } else {
            // PyTorch's [out, in] row-major is the [K, N] matrix with tag "ba".
            let user = dnnlMD([inFeatures, outFeatures], dnnl_f32, tag: dnnl_ba)
            wbuf = weights.withUnsafeBytes { dnnlReorder(from: $0.baseAddress!, user, to: wmd) }
            reordered.append((wmd, wbuf))
        }
        var biasMem: DNNLMemory? = nil
        if let b = biasBuffer { biasMem = DNNLMemory(&biasMD, handle: b.pointer) }
        let plan = Plan(prim: prim, src: DNNLMemory(&src, handle: nil), wei: DNNLMemory(&wmd, handle: wbuf.pointer),
                        dst: DNNLMemory(&dst, handle: nil), bias: biasMem)
        plans[m] = plan
        return plan
    }
}

/// A strided batched matrix product `C[b] = A[b] · B[b]` over plain fp32 memory.
///
/// Dimensions are `[B0, B1, M, K] · [B0, B1, K, N] → [B0, B1, M, N]` with explicit element strides
/// for each operand, so attention can read heads straight out of `[N, T, C]` token tensors.
public final class StridedBatchedMatmul: @unchecked Sendable {
    public struct Operand: Hashable { public var dims: [Int]; public var strides: [Int]
        public init(dims: [Int], strides: [Int]) { self.dims = dims; self.strides = strides } }
    private struct Key: Hashable { let a, b, c: Operand }
    private struct Plan { let prim: DNNLPrimitive; let a, b, c: DNNLMemory }
    private var plans: [Key: Plan] = [:]

    public init() {}

    /// Runs `c = a · b` with the given layouts. Pointers must cover the strided extents.
    public func run(a: UnsafeMutablePointer<Float>, _ la: Operand, b: UnsafeMutablePointer<Float>, _ lb: Operand,
                    c: UnsafeMutablePointer<Float>, _ lc: Operand) {
        let key = Key(a: la, b: lb, c: lc)
        let plan: Plan
        if let p = plans[key] { plan = p } else {
            var amd = dnnlMD(la.dims, dnnl_f32, strides: la.strides)
            var bmd = dnnlMD(lb.dims, dnnl_f32, strides: lb.strides)
            var cmd = dnnlMD(lc.dims, dnnl_f32, strides: lc.strides)
            var md = dnnl_matmul_desc_t()
            dnnlCheck(dnnl_matmul_desc_init(&md, &amd, &bmd, nil, &cmd), "batched matmul desc \(la.dims)x\(lb.dims)")
            var pd: dnnl_primitive_desc_t? = nil
            dnnlCheck(dnnl_primitive_desc_create(&pd, &md, nil, DNNL.shared.engine, nil), "batched matmul primitive_desc_create")
            plan = Plan(prim: DNNLPrimitive(desc: pd!), a: DNNLMemory(&amd, handle: nil), b: DNNLMemory(&bmd, handle: nil),
                        c: DNNLMemory(&cmd, handle: nil))
            plans[key] = plan
        }
        plan.a.setHandle(a); plan.b.setHandle(b); plan.c.setHandle(c)
        plan.prim.execute([dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: plan.a.memory),
                           dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: plan.b.memory),
                           dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: plan.c.memory)])
    }
}
