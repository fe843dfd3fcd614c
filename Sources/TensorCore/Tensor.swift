//===--- Tensor.swift - dense fp32 tensor, NHWC for images -----------------===//
//
// Shape legend used across the package: N = batch, H = height, W = width, C = channels,
// T = tokens (H·W), M/K = matmul rows/inner dimension.
//
//===----------------------------------------------------------------------===//

import Foundation
import Synchronization

/// A dense, contiguous fp32 tensor with reference semantics.
///
/// Image tensors are NHWC (`[N, H, W, C]`), matrices are row-major (`[M, K]`). Storage is
/// 64-byte aligned so oneDNN can use it directly. The tensor owns its memory; `deinit` frees it.
public final class Tensor: @unchecked Sendable {
    /// Dimensions, outermost first.
    public let shape: [Int]
    /// Number of elements (product of `shape`).
    public let count: Int
    /// Element storage, `count` floats, 64-byte aligned.
    public let data: UnsafeMutablePointer<Float>

    /// A zero-filled tensor of the given shape.
    public convenience init(shape: [Int]) {
        self.init(uninitialized: shape)
        data.update(repeating: 0, count: max(count, 1))
    }

    /// A tensor whose elements are unspecified: for outputs a kernel overwrites completely
    /// (saves a write pass over memory that is about to be written anyway).
    public init(uninitialized shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        let raw = TensorStorage.allocate(byteCount: max(count, 1) * 4)
        // Float is a trivial type: binding is all the initialization it needs.
        self.data = raw.bindMemory(to: Float.self, capacity: max(count, 1))
    }

    /// A tensor holding `values` (row-major in `shape`).
    public convenience init(shape: [Int], values: [Float]) {
        self.init(shape: shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    /// A tensor filled with `value`.
    public convenience init(shape: [Int], repeating value: Float) {
        self.init(shape: shape)
        data.update(repeating: value, count: count)
    }

    deinit { TensorStorage.release(UnsafeMutableRawPointer(data), byteCount: max(count, 1) * 4) }

    /// The elements as an array (row-major).
    public var array: [Float] { Array(UnsafeBufferPointer(start: data, count: count)) }

    /// A buffer view of the elements.
    public var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: data, count: count) }

    /// A deep copy.
    public func copy() -> Tensor {
        let t = Tensor(uninitialized: shape)
        t.data.update(from: data, count: count)
        return t
    }

    /// The same elements under another shape with the same element count (copies).
    public func reshaped(_ newShape: [Int]) -> Tensor {
        precondition(newShape.reduce(1, *) == count, "cannot reshape \(shape) to \(newShape)")
        let t = Tensor(uninitialized: newShape)
        t.data.update(from: data, count: count)
        return t
    }

    /// Rows `range` of the outermost dimension as a new tensor (copies).
    public func slice(batch range: Range<Int>) -> Tensor {
        precondition(range.lowerBound >= 0 && range.upperBound <= shape[0])
        let inner = shape.dropFirst().reduce(1, *)
        let t = Tensor(uninitialized: [range.count] + shape.dropFirst())
        t.data.update(from: data + range.lowerBound * inner, count: range.count * inner)
        return t
    }

    /// The rows `indices` of the outermost dimension, in that order, as a new tensor (copies).
    public func gather(batch indices: [Int]) -> Tensor {
        let inner = shape.dropFirst().reduce(1, *)
        let t = Tensor(uninitialized: [indices.count] + shape.dropFirst())
        for (j, i) in indices.enumerated() {
            precondition(i >= 0 && i < shape[0], "gather: index \(i) out of 0..<\(shape[0])")
            (t.data + j * inner).update(from: data + i * inner, count: inner)
        }
        return t
    }

    /// Concatenates tensors along the outermost dimension.
    public static func concatenate(batch parts: [Tensor]) -> Tensor {
        precondition(!parts.isEmpty)
        let inner = Array(parts[0].shape.dropFirst())
        precondition(parts.allSatisfy { Array($0.shape.dropFirst()) == inner }, "inner shapes differ")
        let t = Tensor(uninitialized: [parts.reduce(0) { $0 + $1.shape[0] }] + inner)
        var offset = 0
        for p in parts {
            (t.data + offset).update(from: p.data, count: p.count)
            offset += p.count
        }
        return t
    }

    /// True when every element is finite.
    public var isFinite: Bool {
        for i in 0..<count where !data[i].isFinite { return false }
        return true
    }
}

// MARK: - Storage reuse

/// Reuses large tensor buffers across forwards. A UNet forward allocates and frees the same
/// activation sizes every step; fresh pages from the kernel cost a fault and a clear each
/// (~170k faults per 7 s at batch 64 before this cache). Buffers of at least 256 KiB are kept by
/// exact size, up to `limitBytes` in total; smaller ones go straight to malloc.
///
/// Only **recurring** sizes are kept: a freed buffer is cached when its size has been allocated at least
/// twice. A one-off size (a growing concatenation of samples, a checkpoint image) goes back to the system
/// at once. Before this rule, `ptqd evaluate` cached every checkpoint concatenation it freed, each of a new
/// size: `--setting B --steps 3 --n 5000` peaked at 878 MiB while sampling, 793 MiB with it (724 at n = 1000).
public enum TensorStorage {
    /// Most bytes kept for reuse (freed buffers beyond this are returned to the system).
    nonisolated(unsafe) public static var limitBytes = 1 << 30
    static let minimumBytes = 256 << 10
    /// Sizes whose allocation counts are tracked before the table is reset (bounds its memory).
    static let maximumTrackedSizes = 4096
    nonisolated(unsafe) private static var free: [Int: [UnsafeMutableRawPointer]] = [:]
    nonisolated(unsafe) private static var cachedBytes = 0
    /// Allocations seen per size (≥ `minimumBytes`), saturating at 2.
    nonisolated(unsafe) private static var allocations: [Int: Int] = [:]
    private static let lock = NSLock()

    /// Bytes of tensors alive now, and the most alive at once since `resetPeakLive()` (the activation memory of
    /// a forward, exact: weights live in arrays and oneDNN buffers, not tensors; the reuse cache is not counted).
    /// Atomics, not the cache lock: small tensors are allocated on hot paths and never touch the lock.
    private static let live = Atomic<Int>(0), peakLive = Atomic<Int>(0)

    private static func noteAllocated(_ bytes: Int) {
        let now = live.wrappingAdd(bytes, ordering: .relaxed).newValue
        var peak = peakLive.load(ordering: .relaxed)
        while now > peak {
            let (done, seen) = peakLive.compareExchange(expected: peak, desired: now, ordering: .relaxed)
            if done { break }
            peak = seen
        }
    }

    /// Bytes currently held for reuse.
    public static var cachedByteCount: Int {
        lock.lock(); defer { lock.unlock() }
        return cachedBytes
    }

    /// (bytes of live tensors, their peak since `resetPeakLive()`).
    public static var liveBytes: (now: Int, peak: Int) {
        (live.load(ordering: .relaxed), peakLive.load(ordering: .relaxed))
    }

    /// Starts a new peak measurement at the current live bytes.
    public static func resetPeakLive() {
        peakLive.store(live.load(ordering: .relaxed), ordering: .relaxed)
    }

    /// 64-byte aligned storage of `byteCount` bytes (contents unspecified).
    static func allocate(byteCount: Int) -> UnsafeMutableRawPointer {
        noteAllocated(byteCount)
        if byteCount >= minimumBytes {
            lock.lock()
            if allocations[byteCount] == nil && allocations.count >= maximumTrackedSizes {
                allocations.removeAll(keepingCapacity: true)
            }
            allocations[byteCount] = min(2, allocations[byteCount, default: 0] + 1)
            if let p = free[byteCount]?.popLast() {
                cachedBytes -= byteCount
                lock.unlock()
                return p
            }
            lock.unlock()
        }
        return UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 64)
    }

    /// Returns storage obtained from `allocate(byteCount:)`.
    static func release(_ p: UnsafeMutableRawPointer, byteCount: Int) {
        live.wrappingSubtract(byteCount, ordering: .relaxed)
        if byteCount >= minimumBytes {
            lock.lock()
            if allocations[byteCount, default: 0] >= 2 && cachedBytes + byteCount <= limitBytes {
                free[byteCount, default: []].append(p)
                cachedBytes += byteCount
                lock.unlock()
                return
            }
            lock.unlock()
        }
        p.deallocate()
    }

    /// Frees every cached buffer (e.g. before measuring peak memory of something else).
    public static func purge() {
        lock.lock()
        for (_, list) in free { for p in list { p.deallocate() } }
        free = [:]
        cachedBytes = 0
        lock.unlock()
    }
}

// MARK: - Layout conversion

extension Tensor {
    /// Builds an NHWC tensor from NCHW data (the PyTorch/diffusers layout).
    /// - Parameter nchw: `[N, C, H, W]` values, row-major.
    public static func fromNCHW(_ nchw: [Float], n: Int, c: Int, h: Int, w: Int) -> Tensor {
        precondition(nchw.count == n * c * h * w, "NCHW data has \(nchw.count) values, expected \(n * c * h * w)")
        let t = Tensor(shape: [n, h, w, c])
        nchw.withUnsafeBufferPointer { src in
            for b in 0..<n { for ch in 0..<c { for y in 0..<h { for x in 0..<w {
                t.data[((b * h + y) * w + x) * c + ch] = src[((b * c + ch) * h + y) * w + x]
            } } } }
        }
        return t
    }

    /// This NHWC tensor's elements in NCHW order.
    public func toNCHW() -> [Float] {
        precondition(shape.count == 4, "toNCHW needs a 4-D NHWC tensor, got \(shape)")
        let (n, h, w, c) = (shape[0], shape[1], shape[2], shape[3])
        var out = [Float](repeating: 0, count: count)
        for b in 0..<n { for y in 0..<h { for x in 0..<w { for ch in 0..<c {
            out[((b * c + ch) * h + y) * w + x] = data[((b * h + y) * w + x) * c + ch]
        } } } }
        return out
    }
}

// MARK: - Comparison

/// Relative error used throughout the tests: `max|a − b| / max|b|` (b is the reference).
public func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "sizes differ: \(a.count) vs \(b.count)")
    var diff: Float = 0, ref: Float = 0
    for i in 0..<a.count {
        diff = max(diff, abs(a[i] - b[i]))
        ref = max(ref, abs(b[i]))
    }
    return ref == 0 ? diff : diff / ref
}
