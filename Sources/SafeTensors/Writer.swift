// Building safetensors files in memory and writing them atomically (through AtomicWrite).

/// Collects tensors and metadata, then produces a safetensors file.
///
/// Layout of the output: 8-byte little-endian header length N (a multiple of 8), N bytes of compact
/// JSON — `__metadata__` first (omitted when empty), then tensors with keys in UTF-8 byte order,
/// each entry as `{"dtype":…,"shape":[…],"data_offsets":[begin,end]}` — padded with spaces, then the
/// tensors' bytes back to back in insertion order (little-endian, no alignment padding).
public struct SafeTensorsWriter {
    /// The `__metadata__` string → string map written into the header.
    public var metadata: [String: String]

    private struct Entry {
        let name: String
        let dtype: SafeTensorsDType
        let shape: [Int]
        let bytes: [UInt8]
    }
    private var entries: [Entry] = []
    private var nameSet: Set<String> = []

    /// Creates an empty writer with the given metadata.
    public init(metadata: [String: String] = [:]) {
        self.metadata = metadata
    }

    /// Names added so far, in insertion order (= data order in the output).
    public var names: [String] { entries.map(\.name) }

    /// Adds a tensor from raw little-endian bytes.
    ///
    /// - Parameters:
    ///   - shape: dimensions, row-major; `[]` for a scalar; zeros allowed (empty tensor).
    ///   - bytes: exactly product(shape) × `dtype.byteSize` bytes.
    /// - Throws: `.emptyTensorName`, `.reservedTensorName` (`__metadata__`), `.duplicateTensorName`,
    ///   `.invalidWriterShape` (negative dimension or size overflow), `.byteCountMismatch`.
    public mutating func add(_ name: String, dtype: SafeTensorsDType, shape: [Int], bytes: [UInt8]) throws {
        guard !name.isEmpty else { throw SafeTensorsError.emptyTensorName }
        guard name != "__metadata__" else { throw SafeTensorsError.reservedTensorName(name: name) }
        // Note: Swift compares strings by canonical equivalence, so two spellings of the same text
        // (e.g. precomposed vs. decomposed "é") count as duplicates — as they would on reading.
        guard !nameSet.contains(name) else { throw SafeTensorsError.duplicateTensorName(name: name) }
        if let d = shape.first(where: { $0 < 0 }) {
            throw SafeTensorsError.invalidWriterShape(name: name, shape: shape, reason: "dimension \(d) is negative")
        }
        guard let expected = HeaderValidator.byteSize(shape: shape, dtype: dtype) else {
            throw SafeTensorsError.invalidWriterShape(name: name, shape: shape, reason: "byte size overflows")
        }
        guard expected == bytes.count else {
            throw SafeTensorsError.byteCountMismatch(name: name, shape: shape, dtype: dtype,
                                                     expectedBytes: expected, actualBytes: bytes.count)
        }
        entries.append(Entry(name: name, dtype: dtype, shape: shape, bytes: bytes))
        nameSet.insert(name)
    }

    /// Adds an F32 tensor; `floats.count` must equal product(shape).
    public mutating func add(_ name: String, floats: [Float], shape: [Int]) throws {
        try add(name, dtype: .f32, shape: shape, bytes: Self.littleEndianBytes(floats.map(\.bitPattern)))
    }

    /// Adds floats stored as `dtype` (F32, F64, F16 or BF16; F16/BF16 rounded to nearest even).
    /// - Throws: `.unsupportedWriterDType` for other dtypes, plus the errors of ``add(_:dtype:shape:bytes:)``.
    public mutating func add(_ name: String, floats: [Float], shape: [Int], as dtype: SafeTensorsDType) throws {
        let bytes: [UInt8]
        switch dtype {
        case .f32: bytes = Self.littleEndianBytes(floats.map(\.bitPattern))
        case .f64: bytes = Self.littleEndianBytes(floats.map { Double($0).bitPattern })
        case .f16: bytes = Self.littleEndianBytes(floats.map(SafeTensorsConversion.float16Bits(from:)))
        case .bf16: bytes = Self.littleEndianBytes(floats.map(SafeTensorsConversion.bfloat16Bits(from:)))
        default: throw SafeTensorsError.unsupportedWriterDType(name: name, dtype: dtype)
        }
        try add(name, dtype: dtype, shape: shape, bytes: bytes)
    }

    /// Adds an I8 tensor; `int8s.count` must equal product(shape).
    public mutating func add(_ name: String, int8s: [Int8], shape: [Int]) throws {
        try add(name, dtype: .i8, shape: shape, bytes: int8s.map { UInt8(bitPattern: $0) })
    }

    /// Adds a U8 tensor; `uint8s.count` must equal product(shape).
    public mutating func add(_ name: String, uint8s: [UInt8], shape: [Int]) throws {
        try add(name, dtype: .u8, shape: shape, bytes: uint8s)
    }

    /// Adds an I32 tensor; `int32s.count` must equal product(shape).
    public mutating func add(_ name: String, int32s: [Int32], shape: [Int]) throws {
        try add(name, dtype: .i32, shape: shape, bytes: Self.littleEndianBytes(int32s))
    }

    /// Adds an I64 tensor; `int64s.count` must equal product(shape).
    public mutating func add(_ name: String, int64s: [Int64], shape: [Int]) throws {
        try add(name, dtype: .i64, shape: shape, bytes: Self.littleEndianBytes(int64s))
    }

    private static func littleEndianBytes<T: FixedWidthInteger>(_ values: [T]) -> [UInt8] {
        #if _endian(little)
        return values.withUnsafeBytes { Array($0) }
        #else
        return values.map(\.littleEndian).withUnsafeBytes { Array($0) }
        #endif
    }

    /// The 8-byte length prefix plus the space-padded header JSON.
    func headerBytes() -> [UInt8] {
        var json: [UInt8] = []
        json.append(UInt8(ascii: "{"))
        var first = true
        func comma() { if !first { json.append(UInt8(ascii: ",")) }; first = false }
        if !metadata.isEmpty {
            comma()
            Self.appendJSONString("__metadata__", to: &json)
            json.append(contentsOf: Array(":{".utf8))
            for (i, key) in metadata.keys.sorted(by: HeaderValidator.utf8Less).enumerated() {
                if i > 0 { json.append(UInt8(ascii: ",")) }
                Self.appendJSONString(key, to: &json)
                json.append(UInt8(ascii: ":"))
                Self.appendJSONString(metadata[key]!, to: &json)
            }
            json.append(UInt8(ascii: "}"))
        }
        var offsets: [String: Range<Int>] = [:]
        var cursor = 0
        for e in entries {
            offsets[e.name] = cursor ..< cursor + e.bytes.count
            cursor += e.bytes.count
        }
        for e in entries.sorted(by: { HeaderValidator.utf8Less($0.name, $1.name) }) {
            comma()
            Self.appendJSONString(e.name, to: &json)
            let r = offsets[e.name]!
            let shape = e.shape.map(String.init).joined(separator: ",")
            json.append(contentsOf: Array(":{\"dtype\":\"\(e.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(r.lowerBound),\(r.upperBound)]}".utf8))
        }
        json.append(UInt8(ascii: "}"))
        let padding = (8 - json.count % 8) % 8
        json.append(contentsOf: repeatElement(UInt8(ascii: " "), count: padding))
        var out: [UInt8] = []
        out.reserveCapacity(8 + json.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        return out
    }

    /// Appends `s` as a JSON string literal: quotes, backslashes and control characters escaped,
    /// everything else as raw UTF-8.
    private static func appendJSONString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [0x5C, 0x22])
            case UInt8(ascii: "\\"): out.append(contentsOf: [0x5C, 0x5C])
            case 0x0A: out.append(contentsOf: [0x5C, UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [0x5C, UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [0x5C, UInt8(ascii: "t")])
            case 0x08: out.append(contentsOf: [0x5C, UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [0x5C, UInt8(ascii: "f")])
            case 0x00 ..< 0x20:
                let hex = Array("0123456789abcdef".utf8)
                out.append(contentsOf: [0x5C, UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                        hex[Int(b >> 4)], hex[Int(b & 0xF)]])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// The complete file contents: header (length a multiple of 8) followed by the data section.
    public func serialized() throws -> [UInt8] {
        var out = headerBytes()
        out.reserveCapacity(out.count + entries.reduce(0) { $0 + $1.bytes.count })
        for e in entries { out.append(contentsOf: e.bytes) }
        return out
    }

    /// Writes the file atomically through ``AtomicWrite``: the bytes go to `"<path>.tmp-<pid>-<random>"`
    /// in the same directory, are fsync'ed, and the temporary file is renamed over `path` (then the
    /// directory is fsync'ed, best effort). On any error the temporary file is removed and `path` is untouched.
    /// - Throws: `.writeFailed(file:reason:)` naming the failing step and the OS error.
    public func write(to path: String) throws {
        do {
            try AtomicWrite.write([headerBytes()] + entries.map(\.bytes), to: path)
        } catch let failure as AtomicWriteFailure {
            throw SafeTensorsError.writeFailed(file: path, reason: failure.description)
        }
    }
}
