//===--- DNNL.swift - the oneDNN engine, stream and error handling ---------===//
//
// oneDNN 2.6 (Debian libdnnl-dev) through the CDNNL system-library target. One CPU engine and
// one stream for the process; primitives are created once per layer and shape and cached by
// their owners. oneDNN parallelizes with OpenMP: call it from one Swift thread at a time.
//
//===----------------------------------------------------------------------===//

import CDNNL
import Foundation

/// A oneDNN call failed: names the call and the status, which is a bug or an unsupported shape.
public struct DNNLError: Error, CustomStringConvertible {
    public let call: String
    public let status: Int
    public var description: String { "oneDNN: \(call) failed with status \(status) (\(DNNLError.name(status)))" }
    static func name(_ s: Int) -> String {
        switch s {
        case 1: return "out of memory"
        case 2: return "invalid arguments"
        case 3: return "unimplemented"
        case 4: return "iterator ends"
        case 5: return "runtime error"
        case 6: return "not required"
        default: return "unknown"
        }
    }
}

@inline(__always)
func dnnlCheck(_ status: dnnl_status_t, _ call: @autoclosure () -> String) {
    if status != dnnl_success {
        // oneDNN failures here mean a shape/format we never expected: a programming error.
        fatalError(DNNLError(call: call(), status: Int(status.rawValue)).description)
    }
}

/// Process-wide oneDNN engine and stream.
public final class DNNL: @unchecked Sendable {
    /// The shared CPU engine and stream.
    public static let shared = DNNL()

    public let engine: dnnl_engine_t
    public let stream: dnnl_stream_t

    private init() {
        var e: dnnl_engine_t? = nil
        dnnlCheck(dnnl_engine_create(&e, dnnl_cpu, 0), "dnnl_engine_create")
        engine = e!
        var s: dnnl_stream_t? = nil
        dnnlCheck(dnnl_stream_create(&s, engine, UInt32(dnnl_stream_default_flags.rawValue)), "dnnl_stream_create")
        stream = s!
    }

    /// Sets the number of threads oneDNN (OpenMP) and our own parallel loops use.
    /// Call before creating primitives.
    public static func setThreads(_ n: Int) {
        precondition(n >= 1, "thread count must be >= 1")
        omp_set_num_threads(Int32(n))
        Parallel.threads = n
    }

    /// The thread count in effect.
    public static var threads: Int { Int(omp_get_max_threads()) }

    /// oneDNN's version string, e.g. "2.6.3".
    public static var version: String {
        let v = dnnl_version()!.pointee
        return "\(v.major).\(v.minor).\(v.patch)"
    }

    /// The instruction set oneDNN dispatches to on this CPU (capped by ONEDNN_MAX_CPU_ISA).
    public static var isaLevel: ISALevel { ISALevel(rawValue: dnnl_get_effective_cpu_isa().rawValue) }

    /// oneDNN's name for `isaLevel`, e.g. "avx512_core_vnni".
    public static var isaName: String { isaLevel.description }

    /// oneDNN's CPU ISA levels (`dnnl_cpu_isa_t`; each value's bits contain those of the levels below it).
    public struct ISALevel: Comparable, CustomStringConvertible, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let sse41 = ISALevel(rawValue: 0x1), avx2 = ISALevel(rawValue: 0x7), avx2VNNI = ISALevel(rawValue: 0x407)
        public static let avx512Core = ISALevel(rawValue: 0x27), avx512CoreVNNI = ISALevel(rawValue: 0x67)
        public static let avx512CoreBF16 = ISALevel(rawValue: 0xe7), avx512CoreAMX = ISALevel(rawValue: 0x3e7)
        /// Ordered by the bits a level contains (avx2_vnni, a separate branch, sorts between avx2 and avx512_core).
        public static func < (a: ISALevel, b: ISALevel) -> Bool {
            func rank(_ l: ISALevel) -> Int {
                switch l.rawValue { case 0x1: 1; case 0x3: 2; case 0x7: 3; case 0x407: 4; case 0x27: 5; case 0x67: 6; case 0xe7: 7; case 0x3e7: 8; default: 0 }
            }
            return rank(a) < rank(b)
        }
        public var description: String {
            switch rawValue {
            case 0x1: return "sse41"
            case 0x3: return "avx"
            case 0x7: return "avx2"
            case 0x407: return "avx2_vnni"
            case 0x27: return "avx512_core"
            case 0x67: return "avx512_core_vnni"
            case 0xe7: return "avx512_core_bf16"
            case 0x3e7: return "avx512_core_amx"
            default: return String(format: "isa 0x%x", rawValue)
            }
        }
    }

    /// Waits for submitted primitives to finish.
    func wait() { dnnlCheck(dnnl_stream_wait(stream), "dnnl_stream_wait") }
}

/// A 64-byte aligned byte buffer for oneDNN memory (weights in oneDNN's blocked layout).
final class AlignedBuffer {
    let pointer: UnsafeMutableRawPointer
    let byteCount: Int
    init(byteCount: Int) {
        self.byteCount = byteCount
        pointer = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 64), alignment: 64)
    }
    deinit { pointer.deallocate() }
}

/// A oneDNN memory object over caller-owned storage; the handle is swapped per call.
final class DNNLMemory {
    let memory: dnnl_memory_t
    init(_ desc: UnsafePointer<dnnl_memory_desc_t>, handle: UnsafeMutableRawPointer?) {
        var m: dnnl_memory_t? = nil
        dnnlCheck(dnnl_memory_create(&m, desc, DNNL.shared.engine, handle), "dnnl_memory_create")
        memory = m!
    }
    func setHandle(_ p: UnsafeMutableRawPointer) {
        dnnlCheck(dnnl_memory_set_data_handle(memory, p), "dnnl_memory_set_data_handle")
    }
    deinit { dnnl_memory_destroy(memory) }
}

/// An owned oneDNN primitive plus its descriptor.
final class DNNLPrimitive {
    let primitive: dnnl_primitive_t
    let desc: dnnl_primitive_desc_t
    init(desc: dnnl_primitive_desc_t) {
        self.desc = desc
        var p: dnnl_primitive_t? = nil
        dnnlCheck(dnnl_primitive_create(&p, desc), "dnnl_primitive_create")
        primitive = p!
    }
    deinit {
        dnnl_primitive_destroy(primitive)
        dnnl_primitive_desc_destroy(desc)
    }
    /// The memory descriptor oneDNN chose for `what` (e.g. `dnnl_query_weights_md`).
    func queryMD(_ what: dnnl_query_t, _ index: Int32 = 0) -> dnnl_memory_desc_t {
        dnnl_primitive_desc_query_md(desc, what, index)!.pointee
    }
    /// The implementation name, e.g. "brgconv:avx512_core".
    var implementation: String {
        var s: UnsafePointer<CChar>? = nil
        dnnl_primitive_desc_query(desc, dnnl_query_impl_info_str, 0, &s)
        return s.map { String(cString: $0) } ?? "?"
    }
    /// Runs a conv/matmul: binds `x` and `y` to the src/dst memories, weights and optional bias already bound.
    func executeWeightLayer(src: DNNLMemory, _ x: UnsafeMutablePointer<Float>, weights: DNNLMemory,
                            dst: DNNLMemory, _ y: UnsafeMutablePointer<Float>, bias: DNNLMemory?) {
        src.setHandle(x)
        dst.setHandle(y)
        var args = [dnnl_exec_arg_t(arg: DNNL_ARG_SRC, memory: src.memory),
                    dnnl_exec_arg_t(arg: DNNL_ARG_WEIGHTS, memory: weights.memory),
                    dnnl_exec_arg_t(arg: DNNL_ARG_DST, memory: dst.memory)]
        if let b = bias { args.append(dnnl_exec_arg_t(arg: DNNL_ARG_BIAS, memory: b.memory)) }
        execute(args)
    }

    func execute(_ args: [dnnl_exec_arg_t]) {
        dnnlCheck(dnnl_primitive_execute(primitive, DNNL.shared.stream, Int32(args.count), args), "dnnl_primitive_execute")
        DNNL.shared.wait()
    }
}

/// Reorders `src` (described by `srcMD`) into a new buffer laid out as `dstMD`.
func dnnlReorder(from src: UnsafeRawPointer, _ srcMD: dnnl_memory_desc_t, to dstMD: dnnl_memory_desc_t) -> AlignedBuffer {
    var s = srcMD, d = dstMD
    let out = AlignedBuffer(byteCount: dnnl_memory_desc_get_size(&d))
    var rpd: dnnl_primitive_desc_t? = nil
    let engine = DNNL.shared.engine
    dnnlCheck(dnnl_reorder_primitive_desc_create(&rpd, &s, engine, &d, engine, nil), "dnnl_reorder_primitive_desc_create")
    let prim = DNNLPrimitive(desc: rpd!)
    let sm = DNNLMemory(&s, handle: UnsafeMutableRawPointer(mutating: src))
    let dm = DNNLMemory(&d, handle: out.pointer)
    prim.execute([dnnl_exec_arg_t(arg: DNNL_ARG_FROM, memory: sm.memory), dnnl_exec_arg_t(arg: DNNL_ARG_TO, memory: dm.memory)])
    return out
}

/// A plain (strided) memory descriptor.
func dnnlMD(_ dims: [Int], _ type: dnnl_data_type_t, tag: dnnl_format_tag_t) -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    dnnlCheck(dnnl_memory_desc_init_by_tag(&md, Int32(dims.count), dims.map(Int64.init), type, tag), "dnnl_memory_desc_init_by_tag \(dims)")
    return md
}

func dnnlMD(_ dims: [Int], _ type: dnnl_data_type_t, strides: [Int]) -> dnnl_memory_desc_t {
    var md = dnnl_memory_desc_t()
    dnnlCheck(dnnl_memory_desc_init_by_strides(&md, Int32(dims.count), dims.map(Int64.init), type, strides.map(Int64.init)),
              "dnnl_memory_desc_init_by_strides \(dims) \(strides)")
    return md
}

func dnnlEqual(_ a: dnnl_memory_desc_t, _ b: dnnl_memory_desc_t) -> Bool {
    var a = a, b = b
    return dnnl_memory_desc_equal(&a, &b) != 0
}

/// Copies floats into a 64-byte aligned buffer that outlives any array mutation.
func alignedCopy(_ values: [Float]) -> AlignedBuffer {
    let b = AlignedBuffer(byteCount: values.count * 4)
    values.withUnsafeBytes { b.pointer.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    return b
}
