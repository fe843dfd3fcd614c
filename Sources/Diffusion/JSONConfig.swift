//===--- JSONConfig.swift - typed, strict access to a JSON config object ---===//

import Foundation

/// A decoded JSON object with typed getters that produce `ModelError`s naming the field.
/// Tracks which keys were read so that unknown fields can be refused.
struct JSONConfig {
    let file: String
    let object: [String: Any]
    private(set) var read: Set<String> = []

    init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelError.missingFile(path: path, hint: "expected a diffusers config JSON file")
        }
        try self.init(data: data, file: path)
    }

    init(data: Data, file: String) throws {
        self.file = file
        let any: Any
        do { any = try JSONSerialization.jsonObject(with: JSONConfig.quotingNonFiniteLiterals(data)) } catch {
            throw ModelError.invalidJSON(path: file, reason: "not parseable")
        }
        guard let obj = any as? [String: Any] else { throw ModelError.invalidJSON(path: file, reason: "top level is not an object") }
        object = obj
    }

    /// Python's `json.dumps` writes ±inf and nan as the bare literals `Infinity`, `-Infinity` and `NaN` (diffusers
    /// saves `lambda_min_clipped: -Infinity` that way); strict JSON has no such literals. Outside strings they become
    /// the strings "Infinity", "-Infinity", "NaN", which `double(_:)` reads back.
    static func quotingNonFiniteLiterals(_ data: Data) -> Data {
        let bytes = [UInt8](data)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var inString = false, escaped = false, i = 0
        while i < bytes.count {
            let b = bytes[i]
            if inString {
                out.append(b)
                if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
                i += 1
                continue
            }
            if b == UInt8(ascii: "\"") { inString = true; out.append(b); i += 1; continue }
            var matched = false
            for word in ["-Infinity", "Infinity", "NaN"] {
                let w = Array(word.utf8)
                if i + w.count <= bytes.count && Array(bytes[i..<(i + w.count)]) == w {
                    out += Array("\"\(word)\"".utf8); i += w.count; matched = true; break
                }
            }
            if !matched { out.append(b); i += 1 }
        }
        return Data(out)
    }

    func has(_ key: String) -> Bool { object[key] != nil }
    func isNull(_ key: String) -> Bool { object[key] is NSNull }

    mutating func int(_ key: String, default d: Int? = nil) throws -> Int {
        read.insert(key)
        guard let v = object[key], !(v is NSNull) else {
            if let d { return d }
            throw ModelError.invalidValue(file: file, field: key, reason: "required integer is missing")
        }
        guard let n = v as? NSNumber, !jsonIsBool(v), n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e12 else {
            throw ModelError.invalidValue(file: file, field: key, reason: "expected an integer, got \(v)")
        }
        return n.intValue
    }

    mutating func optionalInt(_ key: String, default d: Int?) throws -> Int? {
        read.insert(key)
        guard let v = object[key] else { return d }
        if v is NSNull { return nil }
        return try int(key)
    }

    mutating func double(_ key: String, default d: Double? = nil) throws -> Double {
        read.insert(key)
        guard let v = object[key], !(v is NSNull) else {
            if let d { return d }
            throw ModelError.invalidValue(file: file, field: key, reason: "required number is missing")
        }
        guard let n = v as? NSNumber, !jsonIsBool(v), n.doubleValue.isFinite else {
            throw ModelError.invalidValue(file: file, field: key, reason: "expected a finite number, got \(v)")
        }
        return n.doubleValue
    }

    /// A number that may be ±infinity (written `Infinity` / `-Infinity` by Python); NaN is an error.
    mutating func extendedDouble(_ key: String, default d: Double) throws -> Double {
        read.insert(key)
        guard let v = object[key], !(v is NSNull) else { return d }
        if let s = v as? String {
            if s == "Infinity" { return .infinity }
            if s == "-Infinity" { return -.infinity }
        }
        guard let n = v as? NSNumber, !jsonIsBool(v), !n.doubleValue.isNaN else {
            throw ModelError.invalidValue(file: file, field: key, reason: "expected a number or -Infinity, got \(v)")
        }
        return n.doubleValue
    }

    mutating func bool(_ key: String, default d: Bool) throws -> Bool {
        read.insert(key)
        guard let v = object[key], !(v is NSNull) else { return d }
        if jsonIsBool(v), let b = v as? Bool { return b }
        throw ModelError.invalidValue(file: file, field: key, reason: "expected true or false, got \(v)")
    }

    mutating func string(_ key: String, default d: String?) throws -> String? {
        read.insert(key)
        guard let v = object[key] else { return d }
        if v is NSNull { return nil }
        guard let s = v as? String else { throw ModelError.invalidValue(file: file, field: key, reason: "expected a string, got \(v)") }
        return s
    }

    mutating func strings(_ key: String, default d: [String]? = nil) throws -> [String] {
        read.insert(key)
        guard let v = object[key], !(v is NSNull) else {
            if let d { return d }
            throw ModelError.invalidValue(file: file, field: key, reason: "required list of strings is missing")
        }
        guard let a = v as? [Any], let s = a as? [String] else {
            throw ModelError.invalidValue(file: file, field: key, reason: "expected a list of strings")
        }
        return s
    }

    mutating func ints(_ key: String, default d: [Int]? = nil) throws -> [Int] {
        read.insert(key)
        guard let v = object[key], !(v is NSNull) else {
            if let d { return d }
            throw ModelError.invalidValue(file: file, field: key, reason: "required list of integers is missing")
        }
        guard let a = v as? [Any] else { throw ModelError.invalidValue(file: file, field: key, reason: "expected a list of integers") }
        return try a.map { e in
            guard let n = e as? NSNumber, !jsonIsBool(e), n.doubleValue == n.doubleValue.rounded(), abs(n.doubleValue) < 1e12 else {
                throw ModelError.invalidValue(file: file, field: key, reason: "expected a list of integers, found \(e)")
            }
            return n.intValue
        }
    }

    /// Marks keys as known without reading them (e.g. training-only fields).
    mutating func accept(_ keys: [String]) { read.formUnion(keys) }

    /// Throws for the first key that was never read (keys starting with "_" are metadata).
    func rejectUnknownFields() throws {
        for key in object.keys.sorted() where !key.hasPrefix("_") && !read.contains(key) {
            throw ModelError.unknownField(file: file, field: key)
        }
    }
}

/// True for JSON `true`/`false` (Foundation bridges them to NSNumber with objCType "c", and
/// `is Bool` also matches plain numbers on Linux, so check the type code).
func jsonIsBool(_ v: Any) -> Bool {
    guard let n = v as? NSNumber else { return false }
    return String(cString: n.objCType) == "c"
}
