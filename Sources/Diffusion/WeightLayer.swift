//===--- WeightLayer.swift - the seam between the network and quantization -===//
//
// The UNet is built from named weight layers (every Conv2d and Linear of the diffusers model).
// A layer's `impl` computes it; the network code only calls `layer(x)`. Quantization swaps
// `impl` for a quantized kernel, calibration for an observer — the model never branches on
// "is this quantized".
//
//===----------------------------------------------------------------------===//

import TensorCore

/// Something that computes a weight layer's output from its input.
public protocol WeightLayerKernel: AnyObject {
    /// - Parameter x: conv: `[N, H, W, Cin]`; linear: `[M, inFeatures]`.
    func forward(_ x: Tensor) -> Tensor
    /// Whether the output depends only on the input (true for compute kernels). Observers and counters that
    /// must see every call return false, so callers never skip them by reusing an earlier output.
    var isPure: Bool { get }
    /// The layer on a normalized activation not yet written (GroupNorm's affine, + SiLU). Kernels that quantize
    /// their input apply it while quantizing (same bytes as quantizing `x.materialize()`); the default materializes.
    func forward(_ x: ChannelAffine) -> Tensor
    /// Whether `forward(_: ChannelAffine)` saves work over materializing (callers feeding several layers from one
    /// normalization materialize once unless every consumer fuses).
    var fusesChannelAffine: Bool { get }
    /// The layer on `x` upsampled ×2 (nearest); integer convs read `x` directly (same values), the default upsamples.
    func forwardUpsampledNearest2x(_ x: Tensor) -> Tensor
    /// `forward(x) + r`, a skip connection added to the output (`r`: as many values as the output, in its order).
    /// Integer kernels add it in their output pass (oneDNN binary post-op: one rounding, the same bits as
    /// `Ops.residual(forward(x), r, divisor: 1)`); the default runs that.
    func forward(_ x: Tensor, plus r: Tensor) -> Tensor
    /// `forward(x) + r` for a normalized activation.
    func forward(_ x: ChannelAffine, plus r: Tensor) -> Tensor
    /// The layer on the channel concatenation `[a, b]` (a UNet up block's input); kernels that read the two parts
    /// where they lie (`readsConcatenation(split:)`) write no concatenated tensor, the default concatenates.
    func forward(_ a: Tensor, concatenatedWith b: Tensor) -> Tensor
    /// Whether `forward(_:concatenatedWith:)` and a `ChannelAffine` over a concatenation with `split` channels in its
    /// first part are read without writing the concatenation.
    func readsConcatenation(split: Int) -> Bool
}

extension WeightLayerKernel {
    public var isPure: Bool { true }
    public func forward(_ x: ChannelAffine) -> Tensor { forward(x.materialize()) }
    public var fusesChannelAffine: Bool { false }
    public func forwardUpsampledNearest2x(_ x: Tensor) -> Tensor { forward(Ops.upsampleNearest2x(x)) }
    public func forward(_ x: Tensor, plus r: Tensor) -> Tensor { addResidual(forward(x), r) }
    public func forward(_ x: ChannelAffine, plus r: Tensor) -> Tensor { addResidual(forward(x), r) }
    public func forward(_ a: Tensor, concatenatedWith b: Tensor) -> Tensor { forward(Ops.concatChannels(a, b)) }
    public func readsConcatenation(split: Int) -> Bool { false }
}

/// `y + r` as a new tensor shaped like `y` (`r`: the same number of values).
private func addResidual(_ y: Tensor, _ r: Tensor) -> Tensor {
    Ops.residual(y, r.shape == y.shape ? r : r.reshaped(y.shape), divisor: 1)
}

extension FloatConv2D: WeightLayerKernel {}
extension FloatLinear: WeightLayerKernel {}
extension BF16Conv2D: WeightLayerKernel {}
extension BF16Linear: WeightLayerKernel {}

/// What a weight layer does in the network; quantization policies key on it.
public enum LayerRole: String, Codable, Sendable, CaseIterable {
    case inputConv          // conv_in
    case outputConv         // conv_out
    case timeEmbedding      // time_embedding.*, class_embedding.* (TimestepEmbedding)
    case timeProjection     // resnets' time_emb_proj
    case conv               // 3x3 convs in ResNet blocks and resamplers
    case shortcut           // 1x1 conv_shortcut of ResNet blocks
    case attentionProjection // to_q, to_k, to_v, to_out.0
    case transformerProjection // Transformer2DModel proj_in / proj_out
    case feedForward        // BasicTransformerBlock ff.net.0.proj, ff.net.2
}

/// The shape of a weight layer.
public enum LayerKind: Equatable, Sendable {
    case conv(Conv2DGeometry)
    case linear(inFeatures: Int, outFeatures: Int)

    /// Number of weight parameters.
    public var weightCount: Int {
        switch self {
        case let .conv(g): return g.weightCount
        case let .linear(i, o): return i * o
        }
    }
    /// Output channels / features (the per-channel quantization axis).
    public var outputs: Int {
        switch self {
        case let .conv(g): return g.outChannels
        case let .linear(_, o): return o
        }
    }
    /// Input channels / features.
    public var inputs: Int {
        switch self {
        case let .conv(g): return g.inChannels
        case let .linear(i, _): return i
        }
    }
}

/// One Conv2d or Linear of the network, addressed by its diffusers parameter prefix.
public final class WeightLayer {
    /// diffusers name, e.g. `down_blocks.0.resnets.1.conv1`.
    public let name: String
    public let kind: LayerKind
    public let role: LayerRole
    /// fp32 weights in PyTorch layout (`[O, I, KH, KW]` or `[out, in]`) and bias `[O]`.
    public let weights: [Float]
    public let bias: [Float]?
    /// For layers fed by a skip concatenation `[h, skip]` (possibly through GroupNorm/SiLU):
    /// the number of input channels of the first part. Quantization gives each part its own
    /// activation quantizer ("shortcut splitting").
    public let inputSplit: Int?
    /// The kernel that runs the layer (fp32 by default).
    public var kernel: WeightLayerKernel

    init(name: String, kind: LayerKind, role: LayerRole, weights: [Float], bias: [Float]?, inputSplit: Int? = nil) {
        self.name = name; self.kind = kind; self.role = role
        self.weights = weights; self.bias = bias; self.inputSplit = inputSplit
        switch kind {
        case let .conv(g): kernel = FloatConv2D(geometry: g, weights: weights, bias: bias)
        case let .linear(i, o): kernel = FloatLinear(inFeatures: i, outFeatures: o, weights: weights, bias: bias)
        }
    }

    /// Runs the layer.
    @inline(__always)
    public func callAsFunction(_ x: Tensor) -> Tensor { kernel.forward(x) }

    /// Runs the layer on a normalized activation (fused into the kernel's input pass where it quantizes it).
    @inline(__always)
    public func callAsFunction(_ x: ChannelAffine) -> Tensor { kernel.forward(x) }

    /// `layer(x) + r` (a skip connection; `r` has the output's number of values), fused where the kernel can.
    @inline(__always)
    public func callAsFunction(_ x: Tensor, plus r: Tensor) -> Tensor { kernel.forward(x, plus: r) }

    /// `layer(x) + r` on a normalized activation.
    @inline(__always)
    public func callAsFunction(_ x: ChannelAffine, plus r: Tensor) -> Tensor { kernel.forward(x, plus: r) }

    /// Runs the layer on `x` upsampled ×2 (nearest): `[N, H, W, C]` read as `[N, 2H, 2W, C]`.
    @inline(__always)
    public func upsampledNearest2x(_ x: Tensor) -> Tensor { kernel.forwardUpsampledNearest2x(x) }

    /// A fresh fp32 kernel for this layer (e.g. to restore full precision).
    public func makeFloatKernel() -> WeightLayerKernel {
        switch kind {
        case let .conv(g): return FloatConv2D(geometry: g, weights: weights, bias: bias)
        case let .linear(i, o): return FloatLinear(inFeatures: i, outFeatures: o, weights: weights, bias: bias)
        }
    }

    /// A bf16 kernel for this layer (bf16 weights and inputs, fp32 accumulation; `DNNL.hasBF16` CPUs).
    public func makeBF16Kernel() -> WeightLayerKernel {
        switch kind {
        case let .conv(g): return BF16Conv2D(geometry: g, weights: weights, bias: bias)
        case let .linear(i, o): return BF16Linear(inFeatures: i, outFeatures: o, weights: weights, bias: bias)
        }
    }
}
