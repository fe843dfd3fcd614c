// A memory-mapped, fully validated safetensors file.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A safetensors file mapped read-only into memory and validated completely on open.
///
/// After `init` succeeds, every tensor's byte range is known to lie inside the file, ranges do not
/// overlap, and they cover the data section exactly, so the accessors below cannot read out of bounds.
/// Tensor data is copied out on access (`floats`, `int8s`, …) or lent without copying (`withRawBytes`).
///
/// The mapping is `MAP_PRIVATE`, `PROT_READ`, and lives until the object is deallocated. As with any
/// memory-mapped file, truncating the file on disk while it is open makes later reads fault (SIGBUS);
/// replacing it by rename (as ``SafeTensorsWriter/write(to:)`` does) is safe.
///
/// The object is immutable after `init`, so it may be shared between threads.
public final class SafeTensorsFile: @unchecked Sendable {
    /// The path as given to `init`; used in every error message.
    public let path: String
    /// The `__metadata__` string → string map (empty if the file has none).
    public let metadata: [String: String]
    /// Every tensor in the file, by name.
    public let tensors: [String: SafeTensorInfo]
    /// Total file size in bytes.
    public let fileSize: Int
    /// Header length N in bytes (the value of the 8-byte prefix, including any trailing padding).
    public let headerLength: Int
    /// Offset in bytes of the data section from the start of the file (8 + `headerLength`).
    public var dataSectionOffset: Int { 8 + headerLength }

    private let base: UnsafeMutableRawPointer
    private let sortedNames: [String]

    /// Lends the whole mapped file (`fileSize` bytes) for the duration of `body`.
    public func withMappedBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: base, count: fileSize))
    }

    /// Opens, maps and validates the file at `path`.
    ///
    /// - Throws: ``SafeTensorsError`` — `.cannotOpen` / `.cannotRead` for OS failures (with the OS
    ///   error text), and one specific case for each format violation (see ``SafeTensorsError``).
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw SafeTensorsError.cannotOpen(file: path, reason: SafeTensorsFile.osError()) }
        defer { close(fd) }

        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw SafeTensorsError.cannotRead(file: path, reason: "fstat: " + SafeTensorsFile.osError())
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw SafeTensorsError.cannotRead(file: path, reason: "not a regular file")
        }
        guard st.st_size >= 8, let size = Int(exactly: st.st_size) else {
            throw SafeTensorsError.fileTooSmall(file: path, size: Int(st.st_size))
        }
        guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0),
              mapped != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw SafeTensorsError.cannotRead(file: path, reason: "mmap: " + SafeTensorsFile.osError())
        }

        let parsed: ParsedHeader
        let n: Int
        do {
            let whole = UnsafeRawBufferPointer(start: mapped, count: size)
            n = try HeaderValidator.headerLength(file: path, prefix: whole, fileSize: size)
            let header = UnsafeRawBufferPointer(rebasing: whole[8 ..< 8 + n])
            parsed = try HeaderValidator.parse(file: path, header: header, dataSize: size - 8 - n)
        } catch {
            munmap(mapped, size)
            throw error
        }
        self.base = mapped
        self.fileSize = size
        self.headerLength = n
        self.metadata = parsed.metadata
        self.tensors = parsed.tensors
        self.sortedNames = parsed.tensors.values.sorted { a, b in
            if a.dataOffsets.lowerBound != b.dataOffsets.lowerBound {
                return a.dataOffsets.lowerBound < b.dataOffsets.lowerBound
            }
            if a.dataOffsets.upperBound != b.dataOffsets.upperBound {
                return a.dataOffsets.upperBound < b.dataOffsets.upperBound
            }
            return HeaderValidator.utf8Less(a.name, b.name)
        }.map(\.name)
    }

    deinit {
        munmap(base, fileSize)
    }

    private static func osError() -> String { String(cString: strerror(errno)) }

    /// All tensor names, sorted by data offset (ties — empty tensors — by name).
    public var names: [String] { sortedNames }

    /// The entry for tensor `name`. - Throws: `.missingTensor(file:name:)`.
    public func info(_ name: String) throws -> SafeTensorInfo {
        guard let info = tensors[name] else { throw SafeTensorsError.missingTensor(file: path, name: name) }
        return info
    }

    /// Whether the file has a tensor called `name`.
    public func contains(_ name: String) -> Bool { tensors[name] != nil }

    /// Lends the tensor's raw little-endian bytes (`info.byteCount` bytes, not necessarily aligned)
    /// without copying. The buffer is valid only inside `body`; do not let it escape.
    /// - Throws: `.missingTensor`, or whatever `body` throws.
    public func withRawBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let info = try info(name)
        return try body(rawBytes(info))
    }

    private func rawBytes(_ info: SafeTensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + dataSectionOffset + info.dataOffsets.lowerBound,
                               count: info.dataOffsets.count)
    }

    /// The floating-point dtypes ``floats(_:)`` accepts.
    public static let floatDTypes: [SafeTensorsDType] = [.f32, .f16, .bf16, .f64]

    /// The tensor's elements as `Float`, row-major, `info.elementCount` values.
    /// F32 is copied exactly, F16 and BF16 are converted exactly, F64 is rounded to nearest `Float`.
    /// - Throws: `.missingTensor`, or `.wrongDType` for integer/bool dtypes.
    public func floats(_ name: String) throws -> [Float] {
        let info = try info(name)
        let raw = rawBytes(info)
        let n = info.elementCount
        switch info.dtype {
        case .f32:
            return SafeTensorsFile.fill(n) { i in Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
        case .f16:
            return SafeTensorsFile.fill(n) { i in
                SafeTensorsConversion.float(fromFloat16Bits: UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            }
        case .bf16:
            return SafeTensorsFile.fill(n) { i in
                SafeTensorsConversion.float(fromBFloat16Bits: UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)))
            }
        case .f64:
            return SafeTensorsFile.fill(n) { i in Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))) }
        default:
            throw SafeTensorsError.wrongDType(file: path, tensor: name, actual: info.dtype, accepted: SafeTensorsFile.floatDTypes)
        }
    }

    /// Like ``floats(_:)`` but first checks that the tensor's shape equals `expectedShape`.
    /// - Throws: `.missingTensor`, `.shapeMismatch` (naming both shapes), or `.wrongDType`.
    public func floats(_ name: String, expectedShape: [Int]) throws -> [Float] {
        let info = try info(name)
        guard info.shape == expectedShape else {
            throw SafeTensorsError.shapeMismatch(file: path, tensor: name, expected: expectedShape, actual: info.shape)
        }
        return try floats(name)
    }

    /// The elements of an I8 tensor. - Throws: `.missingTensor`, or `.wrongDType` unless the dtype is I8.
    public func int8s(_ name: String) throws -> [Int8] { try integers(name, .i8, as: Int8.self) }
    /// The elements of a U8 tensor. - Throws: `.missingTensor`, or `.wrongDType` unless the dtype is U8.
    public func uint8s(_ name: String) throws -> [UInt8] { try integers(name, .u8, as: UInt8.self) }
    /// The elements of an I16 tensor. - Throws: `.missingTensor`, or `.wrongDType` unless the dtype is I16.
    public func int16s(_ name: String) throws -> [Int16] { try integers(name, .i16, as: Int16.self) }
    /// The elements of an I32 tensor. - Throws: `.missingTensor`, or `.wrongDType` unless the dtype is I32.
    public func int32s(_ name: String) throws -> [Int32] { try integers(name, .i32, as: Int32.self) }
    /// The elements of an I64 tensor. - Throws: `.missingTensor`, or `.wrongDType` unless the dtype is I64.
    public func int64s(_ name: String) throws -> [Int64] { try integers(name, .i64, as: Int64.self) }

    private func integers<T: FixedWidthInteger>(_ name: String, _ dtype: SafeTensorsDType, as: T.Type) throws -> [T] {
        let info = try info(name)
        guard info.dtype == dtype else {
            throw SafeTensorsError.wrongDType(file: path, tensor: name, actual: info.dtype, accepted: [dtype])
        }
        let raw = rawBytes(info)
        let stride = MemoryLayout<T>.size
        return SafeTensorsFile.fill(info.elementCount) { i in T(littleEndian: raw.loadUnaligned(fromByteOffset: stride * i, as: T.self)) }
    }

    /// Builds an array of `n` elements from `element(i)`, without zero-initialising first.
    @inline(__always)
    private static func fill<T>(_ n: Int, _ element: (Int) -> T) -> [T] {
        [T](unsafeUninitializedCapacity: n) { buffer, count in
            for i in 0 ..< n { (buffer.baseAddress! + i).initialize(to: element(i)) }
            count = n
        }
    }
}
