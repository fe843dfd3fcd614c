// Parsing and full validation of the safetensors framing and JSON header.

/// One tensor's entry from a validated header.
public struct SafeTensorInfo: Sendable, Equatable {
    /// The tensor's name (the header key), e.g. `"conv_in.weight"`.
    public let name: String
    /// The element type.
    public let dtype: SafeTensorsDType
    /// Dimensions in header order (row-major, last dimension fastest); `[]` is a scalar (1 element).
    public let shape: [Int]
    /// Byte range of the tensor's data, relative to the start of the data section
    /// (the byte right after the header). `dataOffsets.count == elementCount * dtype.byteSize`.
    public let dataOffsets: Range<Int>

    /// Creates an entry; no validation is done here (the reader validates before creating one).
    public init(name: String, dtype: SafeTensorsDType, shape: [Int], dataOffsets: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    /// Number of elements: the product of `shape` (1 for a scalar, 0 if any dimension is 0).
    public var elementCount: Int { shape.reduce(1, &*) }

    /// Size of the tensor's data in bytes (`dataOffsets.count`).
    public var byteCount: Int { dataOffsets.count }
}

/// The validated content of a header.
struct ParsedHeader {
    /// `__metadata__` (empty if absent).
    var metadata: [String: String]
    /// Tensor entries by name.
    var tensors: [String: SafeTensorInfo]
}

/// Framing and header validation; every violation is a ``SafeTensorsError``, never a trap.
enum HeaderValidator {
    /// Largest accepted header, in bytes (the same limit as the reference implementation).
    static let maxHeaderLength = 100_000_000

    /// Reads and checks the 8-byte little-endian header-length prefix of a file of `fileSize` bytes.
    /// `prefix` must hold at least 8 bytes. Returns the header length N in bytes; the data section
    /// then starts at byte 8 + N and is `fileSize - 8 - N` bytes long.
    static func headerLength(file: String, prefix: UnsafeRawBufferPointer, fileSize: Int) throws -> Int {
        guard fileSize >= 8, prefix.count >= 8 else { throw SafeTensorsError.fileTooSmall(file: file, size: fileSize) }
        let n = UInt64(littleEndian: prefix.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        if n == 0 { throw SafeTensorsError.headerLengthZero(file: file) }
        let available = fileSize - 8
        if n > UInt64(available) {
            throw SafeTensorsError.headerLengthExceedsFile(file: file, headerLength: n, available: available)
        }
        if n > UInt64(maxHeaderLength) {
            throw SafeTensorsError.headerTooLarge(file: file, headerLength: n, limit: maxHeaderLength)
        }
        return Int(n)
    }

    /// Parses and validates the header JSON (`header`, N bytes) against a data section of `dataSize` bytes.
    static func parse(file: String, header: UnsafeRawBufferPointer, dataSize: Int) throws -> ParsedHeader {
        let bytes = header.bindMemory(to: UInt8.self)
        try checkUTF8(file: file, bytes)

        let root: JSONValue
        do {
            root = try JSONParser.parse(bytes)
        } catch let JSONParseError.syntax(message, offset) {
            throw SafeTensorsError.invalidJSON(file: file, reason: "\(message) at header byte \(offset)")
        } catch let JSONParseError.duplicateKey(key) {
            throw SafeTensorsError.duplicateKey(file: file, key: key)
        }
        guard case let .object(entries) = root else {
            throw SafeTensorsError.headerNotObject(file: file, found: root.kindName)
        }

        var metadata: [String: String] = [:]
        var tensors: [String: SafeTensorInfo] = [:]
        // Deterministic order, so the same bad file always reports the same first error.
        for key in entries.keys.sorted(by: utf8Less) {
            let value = entries[key]!
            if key == "__metadata__" {
                metadata = try parseMetadata(file: file, value)
            } else {
                let info = try parseEntry(file: file, name: key, value)
                if info.dataOffsets.upperBound > dataSize {
                    throw SafeTensorsError.rangeOutOfBounds(file: file, tensor: key, range: info.dataOffsets,
                                                            dataSize: dataSize)
                }
                tensors[key] = info
            }
        }
        try checkLayout(file: file, tensors: Array(tensors.values), dataSize: dataSize)
        return ParsedHeader(metadata: metadata, tensors: tensors)
    }

    /// Byte-wise (UTF-8) ordering, the order the writer uses for header keys.
    static func utf8Less(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }

    private static func checkUTF8(file: String, _ bytes: UnsafeBufferPointer<UInt8>) throws {
        // Fast path: pure ASCII is by far the common case.
        if !bytes.contains(where: { $0 >= 0x80 }) { return }
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue: continue
            case .emptyInput: return
            case .error: throw SafeTensorsError.headerNotUTF8(file: file)
            }
        }
    }

    private static func parseMetadata(file: String, _ value: JSONValue) throws -> [String: String] {
        guard case let .object(dict) = value else {
            throw SafeTensorsError.invalidMetadata(file: file, reason: "it is a JSON \(value.kindName)")
        }
        var out: [String: String] = [:]
        for key in dict.keys.sorted(by: utf8Less) {
            guard case let .string(s) = dict[key]! else {
                throw SafeTensorsError.invalidMetadata(
                    file: file, reason: "value of key '\(oneLine(key))' is a JSON \(dict[key]!.kindName), not a string")
            }
            out[key] = s
        }
        return out
    }

    private static func parseEntry(file: String, name: String, _ value: JSONValue) throws -> SafeTensorInfo {
        guard case let .object(fields) = value else {
            throw SafeTensorsError.entryNotObject(file: file, tensor: name)
        }
        // dtype
        guard let dtypeValue = fields["dtype"] else {
            throw SafeTensorsError.missingField(file: file, tensor: name, field: "dtype")
        }
        guard case let .string(dtypeName) = dtypeValue else {
            throw SafeTensorsError.dtypeNotString(file: file, tensor: name)
        }
        guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
            throw SafeTensorsError.unknownDType(file: file, tensor: name, dtype: dtypeName)
        }
        // shape
        guard let shapeValue = fields["shape"] else {
            throw SafeTensorsError.missingField(file: file, tensor: name, field: "shape")
        }
        guard case let .array(dims) = shapeValue else {
            throw SafeTensorsError.invalidShape(
                file: file, tensor: name, reason: "expected an array of non-negative integers, found a JSON \(shapeValue.kindName)")
        }
        var shape: [Int] = []
        shape.reserveCapacity(dims.count)
        for (i, d) in dims.enumerated() {
            shape.append(try nonNegativeInt(d) { reason in
                SafeTensorsError.invalidShape(file: file, tensor: name, reason: "dimension \(i) \(reason)")
            })
        }
        // data_offsets
        guard let offsetsValue = fields["data_offsets"] else {
            throw SafeTensorsError.missingField(file: file, tensor: name, field: "data_offsets")
        }
        guard case let .array(offs) = offsetsValue, offs.count == 2 else {
            let found: String
            if case let .array(a) = offsetsValue { found = a.count == 1 ? "an array of 1 element" : "an array of \(a.count) elements" } else { found = "a JSON \(offsetsValue.kindName)" }
            throw SafeTensorsError.invalidDataOffsets(
                file: file, tensor: name, reason: "expected [begin, end] (two non-negative integers), found \(found)")
        }
        let begin = try nonNegativeInt(offs[0]) { reason in
            SafeTensorsError.invalidDataOffsets(file: file, tensor: name, reason: "begin \(reason)")
        }
        let end = try nonNegativeInt(offs[1]) { reason in
            SafeTensorsError.invalidDataOffsets(file: file, tensor: name, reason: "end \(reason)")
        }
        guard begin <= end else {
            throw SafeTensorsError.invalidDataOffsets(
                file: file, tensor: name, reason: "begin \(begin) is greater than end \(end)")
        }
        // size
        guard let expected = byteSize(shape: shape, dtype: dtype) else {
            throw SafeTensorsError.sizeOverflow(file: file, tensor: name, shape: shape, dtype: dtype)
        }
        if expected != end - begin {
            throw SafeTensorsError.sizeMismatch(file: file, tensor: name, shape: shape, dtype: dtype,
                                                expectedBytes: expected, actualBytes: end - begin)
        }
        return SafeTensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: begin..<end)
    }

    /// product(shape) × dtype.byteSize in bytes, or nil on overflow. Dimensions must be ≥ 0.
    static func byteSize(shape: [Int], dtype: SafeTensorsDType) -> Int? {
        var total = dtype.byteSize
        for d in shape {
            let (p, overflow) = total.multipliedReportingOverflow(by: d)
            if overflow { return nil }
            total = p
        }
        return total
    }

    /// Extracts a non-negative integer or throws `makeError(reason)` where reason completes
    /// "dimension 2 …"/"begin …" (e.g. "is -3, a negative number").
    private static func nonNegativeInt(_ v: JSONValue, _ makeError: (String) -> SafeTensorsError) throws -> Int {
        switch v {
        case let .int(i):
            if i < 0 { throw makeError("is \(i), a negative number") }
            return i
        case let .bigInt(text):
            throw makeError("is \(String(text.prefix(40))), too large")
        case let .float(d):
            throw makeError("is \(d), not an integer")
        default:
            throw makeError("is \(v.brief), not an integer")
        }
    }

    /// Checks that the tensors' byte ranges tile the data section [0, dataSize) exactly: no overlap,
    /// no gap, nothing after the last tensor. Every range is already known to end ≤ dataSize.
    private static func checkLayout(file: String, tensors: [SafeTensorInfo], dataSize: Int) throws {
        let sorted = tensors.sorted { a, b in
            if a.dataOffsets.lowerBound != b.dataOffsets.lowerBound { return a.dataOffsets.lowerBound < b.dataOffsets.lowerBound }
            if a.dataOffsets.upperBound != b.dataOffsets.upperBound { return a.dataOffsets.upperBound < b.dataOffsets.upperBound }
            return utf8Less(a.name, b.name)
        }
        var cursor = 0
        var owner: SafeTensorInfo? = nil  // the tensor whose range ends at `cursor`
        for t in sorted {
            let r = t.dataOffsets
            if r.lowerBound < cursor, let o = owner {
                // Also catches an empty range lying strictly inside another tensor's bytes.
                throw SafeTensorsError.overlappingRanges(file: file, first: o.name, firstRange: o.dataOffsets,
                                                         second: t.name, secondRange: r)
            }
            if r.lowerBound > cursor {
                throw SafeTensorsError.gapInData(file: file, gap: cursor..<r.lowerBound, before: t.name)
            }
            cursor = r.upperBound
            owner = t
        }
        if cursor != dataSize {
            throw SafeTensorsError.trailingGarbage(file: file, dataEnd: cursor, dataSize: dataSize)
        }
    }
}
