// A small, strict JSON parser for safetensors headers (RFC 8259).
//
// Why not JSONSerialization: it hides whether `2` was written as `2` or `2.0`, silently keeps one
// of two duplicate keys, and its integer/float distinction differs between platforms. This parser
// keeps integer literals apart from other numbers, rejects duplicate keys, and bounds nesting depth
// so hostile input cannot overflow the stack.

/// A parsed JSON value. Integer literals (no fraction, no exponent) that fit in `Int` are `.int`;
/// integer literals that do not fit are `.bigInt` (with their text); every other number is `.float`.
enum JSONValue: Equatable {
    case object([String: JSONValue])
    case array([JSONValue])
    case string(String)
    case int(Int)
    case bigInt(String)
    case float(Double)
    case bool(Bool)
    case null

    /// The JSON kind for messages: "object", "array", "string", "integer", "number", "boolean", "null".
    var kindName: String {
        switch self {
        case .object: return "object"
        case .array: return "array"
        case .string: return "string"
        case .int, .bigInt: return "integer"
        case .float: return "number"
        case .bool: return "boolean"
        case .null: return "null"
        }
    }

    /// A short rendering of the value for messages (strings quoted, containers summarised).
    var brief: String {
        switch self {
        case .object: return "an object"
        case .array: return "an array"
        case let .string(s): return "string \"\(oneLine(String(s.prefix(40))))\""
        case let .int(i): return "\(i)"
        case let .bigInt(s): return String(s.prefix(40))
        case let .float(d): return "\(d)"
        case let .bool(b): return "\(b)"
        case .null: return "null"
        }
    }
}

/// Why a JSON text was rejected. `offset` is the byte offset within the parsed text.
enum JSONParseError: Error, Equatable {
    case syntax(String, offset: Int)
    case duplicateKey(String)
}

/// Recursive-descent parser over UTF-8 bytes. Call ``parse(_:)``.
struct JSONParser {
    /// Maximum nesting of arrays/objects; a safetensors header needs 3.
    static let maxDepth = 64

    private let bytes: UnsafeBufferPointer<UInt8>
    private var pos = 0
    private var depth = 0

    private init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    /// Parses one JSON value surrounded by optional whitespace and nothing else.
    static func parse(_ bytes: UnsafeBufferPointer<UInt8>) throws -> JSONValue {
        var p = JSONParser(bytes)
        p.skipWhitespace()
        let value = try p.parseValue()
        p.skipWhitespace()
        if p.pos != bytes.count { throw p.fail("unexpected \(p.describeCurrent()) after the top-level value") }
        return value
    }

    private func fail(_ message: String) -> JSONParseError { .syntax(message, offset: pos) }

    private func describeCurrent() -> String {
        guard pos < bytes.count else { return "end of header" }
        let b = bytes[pos]
        if b >= 0x21 && b < 0x7F { return "character '\(Character(Unicode.Scalar(b)))'" }
        return "byte 0x\(String(b, radix: 16))"
    }

    private mutating func skipWhitespace() {
        while pos < bytes.count {
            switch bytes[pos] {
            case 0x20, 0x09, 0x0A, 0x0D: pos += 1
            default: return
            }
        }
    }

    private mutating func parseValue() throws -> JSONValue {
        guard pos < bytes.count else { throw fail("unexpected end of header, expected a value") }
        switch bytes[pos] {
        case UInt8(ascii: "{"): return try parseObject()
        case UInt8(ascii: "["): return try parseArray()
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
        case UInt8(ascii: "t"): try expectLiteral("true"); return .bool(true)
        case UInt8(ascii: "f"): try expectLiteral("false"); return .bool(false)
        case UInt8(ascii: "n"): try expectLiteral("null"); return .null
        default: throw fail("unexpected \(describeCurrent()), expected a value")
        }
    }

    private mutating func expectLiteral(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard bytes.count - pos >= n else { throw fail("unexpected end of header in a literal") }
        for i in 0..<n where bytes[pos + i] != word.utf8Start[i] {
            throw fail("invalid literal, expected '\(word)'")
        }
        pos += n
    }

    private mutating func enter() throws {
        depth += 1
        if depth > JSONParser.maxDepth { throw fail("nesting deeper than \(JSONParser.maxDepth) levels") }
    }

    private mutating func parseObject() throws -> JSONValue {
        try enter()
        defer { depth -= 1 }
        pos += 1 // '{'
        var dict: [String: JSONValue] = [:]
        skipWhitespace()
        if pos < bytes.count && bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(dict) }
        while true {
            skipWhitespace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else {
                throw fail("unexpected \(describeCurrent()), expected a string key")
            }
            let key = try parseString()
            skipWhitespace()
            guard pos < bytes.count, bytes[pos] == UInt8(ascii: ":") else {
                throw fail("unexpected \(describeCurrent()), expected ':'")
            }
            pos += 1
            skipWhitespace()
            let value = try parseValue()
            if dict.updateValue(value, forKey: key) != nil { throw JSONParseError.duplicateKey(key) }
            skipWhitespace()
            guard pos < bytes.count else { throw fail("unexpected end of header inside an object") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "}") { pos += 1; return .object(dict) }
            throw fail("unexpected \(describeCurrent()), expected ',' or '}'")
        }
    }

    private mutating func parseArray() throws -> JSONValue {
        try enter()
        defer { depth -= 1 }
        pos += 1 // '['
        var items: [JSONValue] = []
        skipWhitespace()
        if pos < bytes.count && bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try parseValue())
            skipWhitespace()
            guard pos < bytes.count else { throw fail("unexpected end of header inside an array") }
            if bytes[pos] == UInt8(ascii: ",") { pos += 1; continue }
            if bytes[pos] == UInt8(ascii: "]") { pos += 1; return .array(items) }
            throw fail("unexpected \(describeCurrent()), expected ',' or ']'")
        }
    }

    private mutating func parseHex4() throws -> UInt32 {
        guard bytes.count - pos >= 4 else { throw fail("unexpected end of header in a \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(c - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(c - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(c - UInt8(ascii: "A") + 10)
            default: throw fail("invalid hex digit in a \\u escape")
            }
            v = v << 4 | d
            pos += 1
        }
        return v
    }

    /// Parses a string starting at the opening quote. Input must already be valid UTF-8.
    private mutating func parseString() throws -> String {
        pos += 1 // opening quote
        var out: [UInt8] = []
        while true {
            guard pos < bytes.count else { throw fail("unterminated string") }
            let c = bytes[pos]
            switch c {
            case UInt8(ascii: "\""):
                pos += 1
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                pos += 1
                guard pos < bytes.count else { throw fail("unterminated escape in a string") }
                let e = bytes[pos]
                pos += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try parseHex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        guard bytes.count - pos >= 2, bytes[pos] == UInt8(ascii: "\\"),
                              bytes[pos + 1] == UInt8(ascii: "u") else {
                            throw fail("unpaired UTF-16 surrogate in a \\u escape")
                        }
                        pos += 2
                        let low = try parseHex4()
                        guard (0xDC00...0xDFFF).contains(low) else {
                            throw fail("unpaired UTF-16 surrogate in a \\u escape")
                        }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(scalar) {
                        throw fail("unpaired UTF-16 surrogate in a \\u escape")
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                    out.append(contentsOf: UTF8.encode(u)!)
                default:
                    pos -= 1
                    throw fail("invalid escape '\\\(describeCurrent())' in a string")
                }
            default:
                if c < 0x20 { throw fail("unescaped control character 0x\(String(c, radix: 16)) in a string") }
                out.append(c)
                pos += 1
            }
        }
    }

    private mutating func parseNumber() throws -> JSONValue {
        let start = pos
        var isInteger = true
        if bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        func isDigit(_ i: Int) -> Bool { i < bytes.count && bytes[i] >= 0x30 && bytes[i] <= 0x39 }
        guard isDigit(pos) else { throw fail("invalid number, expected a digit") }
        if bytes[pos] == UInt8(ascii: "0") {
            pos += 1
            if isDigit(pos) { throw fail("invalid number, leading zeros are not allowed") }
        } else {
            while isDigit(pos) { pos += 1 }
        }
        if pos < bytes.count && bytes[pos] == UInt8(ascii: ".") {
            isInteger = false
            pos += 1
            guard isDigit(pos) else { throw fail("invalid number, expected a digit after '.'") }
            while isDigit(pos) { pos += 1 }
        }
        if pos < bytes.count && (bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E")) {
            isInteger = false
            pos += 1
            if pos < bytes.count && (bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-")) { pos += 1 }
            guard isDigit(pos) else { throw fail("invalid number, expected a digit in the exponent") }
            while isDigit(pos) { pos += 1 }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
        if isInteger {
            if let i = Int(text) { return .int(i) }
            return .bigInt(text)
        }
        return .float(Double(text) ?? .nan)
    }
}
