// Every way reading or writing a safetensors file can fail, one case per violation.

/// An error from reading, validating or writing a safetensors file.
///
/// `file` is the path exactly as given to ``SafeTensorsFile/init(path:)`` or
/// ``SafeTensorsWriter/write(to:)``; `tensor` is a tensor name from the header. Byte counts and
/// offsets are in bytes; data offsets are relative to the start of the data section (as in the header).
/// ``description`` is always a single line that names the file (and the tensor where there is one).
public enum SafeTensorsError: Error, CustomStringConvertible, Equatable {
    // MARK: File access
    /// The file could not be opened; `reason` is the OS error text (e.g. "No such file or directory").
    case cannotOpen(file: String, reason: String)
    /// The file was opened but could not be inspected or mapped (fstat/mmap failed, or not a regular file).
    case cannotRead(file: String, reason: String)

    // MARK: Framing
    /// The file is shorter than the 8-byte header-length prefix.
    case fileTooSmall(file: String, size: Int)
    /// The header-length prefix is 0.
    case headerLengthZero(file: String)
    /// The header-length prefix exceeds the bytes that follow it (`available` = file size − 8).
    case headerLengthExceedsFile(file: String, headerLength: UInt64, available: Int)
    /// The header-length prefix exceeds the 100 MB limit (`limit` in bytes).
    case headerTooLarge(file: String, headerLength: UInt64, limit: Int)

    // MARK: Header syntax
    /// The header bytes are not valid UTF-8.
    case headerNotUTF8(file: String)
    /// The header is not valid JSON; `reason` says what and where (byte offset within the header).
    case invalidJSON(file: String, reason: String)
    /// The header is valid JSON but its top level is not an object (`found` = "array", "string", …).
    case headerNotObject(file: String, found: String)
    /// The header names the same key twice.
    case duplicateKey(file: String, key: String)

    // MARK: Tensor entries
    /// A tensor's entry is not a JSON object.
    case entryNotObject(file: String, tensor: String)
    /// A tensor's entry lacks a required field (`dtype`, `shape` or `data_offsets`).
    case missingField(file: String, tensor: String, field: String)
    /// A tensor's `dtype` is not a JSON string.
    case dtypeNotString(file: String, tensor: String)
    /// A tensor's `dtype` is a string this package does not support.
    case unknownDType(file: String, tensor: String, dtype: String)
    /// A tensor's `shape` is not an array of non-negative integers; `reason` says which element is wrong.
    case invalidShape(file: String, tensor: String, reason: String)
    /// A tensor's `data_offsets` is not `[begin, end]` with integers 0 ≤ begin ≤ end.
    case invalidDataOffsets(file: String, tensor: String, reason: String)
    /// product(shape) × dtype size does not fit in `Int`.
    case sizeOverflow(file: String, tensor: String, shape: [Int], dtype: SafeTensorsDType)
    /// product(shape) × dtype size (`expectedBytes`) differs from end − begin (`actualBytes`).
    case sizeMismatch(file: String, tensor: String, shape: [Int], dtype: SafeTensorsDType,
                      expectedBytes: Int, actualBytes: Int)
    /// A tensor's byte range extends past the end of the data section (`dataSize` bytes long).
    case rangeOutOfBounds(file: String, tensor: String, range: Range<Int>, dataSize: Int)
    /// Two tensors' byte ranges overlap (`second` starts before `first` ends).
    case overlappingRanges(file: String, first: String, firstRange: Range<Int>,
                           second: String, secondRange: Range<Int>)
    /// Bytes `gap` of the data section belong to no tensor and are followed by tensor `before`.
    case gapInData(file: String, gap: Range<Int>, before: String)
    /// Bytes after the last tensor's end (`dataEnd`) up to the file end (`dataSize`) belong to no tensor.
    case trailingGarbage(file: String, dataEnd: Int, dataSize: Int)
    /// `__metadata__` is not an object mapping strings to strings; `reason` says which part is wrong.
    case invalidMetadata(file: String, reason: String)

    // MARK: Lookup (after a successful load)
    /// No tensor with this name is in the file.
    case missingTensor(file: String, name: String)
    /// The accessor does not accept the tensor's dtype; `accepted` lists the dtypes it does accept.
    case wrongDType(file: String, tensor: String, actual: SafeTensorsDType, accepted: [SafeTensorsDType])
    /// The tensor's shape is not the shape the caller expected.
    case shapeMismatch(file: String, tensor: String, expected: [Int], actual: [Int])

    // MARK: Writer
    /// ``SafeTensorsWriter/add(_:dtype:shape:bytes:)`` was given an empty name.
    case emptyTensorName
    /// The name `__metadata__` is reserved for the metadata entry.
    case reservedTensorName(name: String)
    /// A tensor with this name was already added to the writer.
    case duplicateTensorName(name: String)
    /// A shape given to the writer has a negative dimension or its byte size overflows `Int`.
    case invalidWriterShape(name: String, shape: [Int], reason: String)
    /// The byte count given to the writer (`actualBytes`) differs from product(shape) × dtype size.
    case byteCountMismatch(name: String, shape: [Int], dtype: SafeTensorsDType,
                           expectedBytes: Int, actualBytes: Int)
    /// ``SafeTensorsWriter/add(_:floats:shape:as:)`` was asked for a non-floating-point dtype.
    case unsupportedWriterDType(name: String, dtype: SafeTensorsDType)
    /// Writing the output failed (`reason` = the step and OS error); no partial file was left behind.
    case writeFailed(file: String, reason: String)

    /// One line naming the file (and tensor where relevant) and saying what is wrong.
    public var description: String {
        switch self {
        case let .cannotOpen(file, reason):
            return "\(file): cannot open file: \(reason)"
        case let .cannotRead(file, reason):
            return "\(file): cannot read file: \(reason)"
        case let .fileTooSmall(file, size):
            return "\(file): file is \(bytesText(size)), shorter than the 8-byte header length prefix (truncated or not a safetensors file)"
        case let .headerLengthZero(file):
            return "\(file): header length prefix is 0; a safetensors header must be a non-empty JSON object"
        case let .headerLengthExceedsFile(file, len, available):
            return "\(file): header length prefix says \(len) bytes but the file has only \(bytesText(available)) after it (file truncated or not a safetensors file)"
        case let .headerTooLarge(file, len, limit):
            return "\(file): header length prefix says \(len) bytes, more than the \(limit)-byte limit"
        case let .headerNotUTF8(file):
            return "\(file): header is not valid UTF-8"
        case let .invalidJSON(file, reason):
            return "\(file): header is not valid JSON: \(reason)"
        case let .headerNotObject(file, found):
            return "\(file): header must be a JSON object but is a JSON \(found)"
        case let .duplicateKey(file, key):
            return "\(file): header contains key '\(oneLine(key))' more than once"
        case let .entryNotObject(file, tensor):
            return "\(file): tensor '\(oneLine(tensor))' entry is not a JSON object"
        case let .missingField(file, tensor, field):
            return "\(file): tensor '\(oneLine(tensor))' has no \"\(field)\" field"
        case let .dtypeNotString(file, tensor):
            return "\(file): tensor '\(oneLine(tensor))' has a dtype that is not a string"
        case let .unknownDType(file, tensor, dtype):
            return "\(file): tensor '\(oneLine(tensor))' has unknown dtype '\(oneLine(dtype))' (supported: \(SafeTensorsDType.supportedList))"
        case let .invalidShape(file, tensor, reason):
            return "\(file): tensor '\(oneLine(tensor))' has an invalid shape: \(reason)"
        case let .invalidDataOffsets(file, tensor, reason):
            return "\(file): tensor '\(oneLine(tensor))' has invalid data_offsets: \(reason)"
        case let .sizeOverflow(file, tensor, shape, dtype):
            return "\(file): tensor '\(oneLine(tensor))' has shape \(fmt(shape)) whose size (elements × \(dtype.byteSize) bytes for \(dtype.rawValue)) overflows a 64-bit integer"
        case let .sizeMismatch(file, tensor, shape, dtype, expected, actual):
            let count = shape.reduce(1, { $0 &* $1 })
            return "\(file): tensor '\(oneLine(tensor))' has shape \(fmt(shape)) (\(count) × \(dtype.rawValue) = \(bytesText(expected))) but data_offsets span \(bytesText(actual))"
        case let .rangeOutOfBounds(file, tensor, range, dataSize):
            return "\(file): tensor '\(oneLine(tensor))' has data_offsets [\(range.lowerBound),\(range.upperBound)] past the end of the \(dataSize)-byte data section (file truncated?)"
        case let .overlappingRanges(file, first, firstRange, second, secondRange):
            return "\(file): tensor '\(oneLine(second))' data_offsets [\(secondRange.lowerBound),\(secondRange.upperBound)] overlap tensor '\(oneLine(first))' data_offsets [\(firstRange.lowerBound),\(firstRange.upperBound)]"
        case let .gapInData(file, gap, before):
            return "\(file): data bytes [\(gap.lowerBound),\(gap.upperBound)) before tensor '\(oneLine(before))' belong to no tensor (gap in data section)"
        case let .trailingGarbage(file, dataEnd, dataSize):
            return "\(file): trailing garbage: \(bytesText(dataSize - dataEnd)) after the last tensor (data ends at \(dataEnd), data section is \(dataSize) bytes)"
        case let .invalidMetadata(file, reason):
            return "\(file): __metadata__ must be an object of string → string: \(reason)"
        case let .missingTensor(file, name):
            return "\(file): no tensor named '\(oneLine(name))'"
        case let .wrongDType(file, tensor, actual, accepted):
            return "\(file): tensor '\(oneLine(tensor))' has dtype \(actual.rawValue) but this accessor accepts only \(accepted.map(\.rawValue).joined(separator: ", "))"
        case let .shapeMismatch(file, tensor, expected, actual):
            return "\(file): tensor '\(oneLine(tensor))' has shape \(fmt(actual)) but \(fmt(expected)) was expected"
        case .emptyTensorName:
            return "SafeTensorsWriter: tensor name must not be empty"
        case let .reservedTensorName(name):
            return "SafeTensorsWriter: tensor name '\(oneLine(name))' is reserved for metadata"
        case let .duplicateTensorName(name):
            return "SafeTensorsWriter: tensor '\(oneLine(name))' was already added"
        case let .invalidWriterShape(name, shape, reason):
            return "SafeTensorsWriter: tensor '\(oneLine(name))' has invalid shape \(fmt(shape)): \(reason)"
        case let .byteCountMismatch(name, shape, dtype, expected, actual):
            return "SafeTensorsWriter: tensor '\(oneLine(name))' has shape \(fmt(shape)) (\(bytesText(expected)) of \(dtype.rawValue)) but \(bytesText(actual)) were given"
        case let .unsupportedWriterDType(name, dtype):
            return "SafeTensorsWriter: tensor '\(oneLine(name))': cannot store floats as \(dtype.rawValue) (accepted: F64, F32, F16, BF16)"
        case let .writeFailed(file, reason):
            return "\(file): write failed, nothing written: \(reason)"
        }
    }
}

/// "1 byte", "36 bytes".
func bytesText(_ n: Int) -> String { n == 1 ? "1 byte" : "\(n) bytes" }

/// Formats a shape as `[3,3]` (no spaces), matching the header spelling.
@inline(__always)
func fmt(_ shape: [Int]) -> String { "[" + shape.map(String.init).joined(separator: ",") + "]" }

/// Keeps messages on one line even if a (hostile) name contains line breaks or control characters,
/// and caps very long names at 200 characters.
func oneLine(_ s: String) -> String {
    var out = ""
    var count = 0
    for scalar in s.unicodeScalars {
        if count == 200 { out += "…"; break }
        if scalar.value < 0x20 || scalar.value == 0x7F || scalar == "\u{2028}" || scalar == "\u{2029}" || scalar == "\u{85}" {
            out += "\\u{\(String(scalar.value, radix: 16))}"
        } else {
            out.unicodeScalars.append(scalar)
        }
        count += 1
    }
    return out
}
