//===--- ModelError.swift - errors for loading models and configs ----------===//

/// Why a model folder, config or weights file cannot be used. Each description is one line that
/// names the file and the field or tensor, and says what to do.
public enum ModelError: Error, CustomStringConvertible, Equatable {
    case missingFile(path: String, hint: String)
    case invalidJSON(path: String, reason: String)
    case unsupportedValue(file: String, field: String, value: String, supported: String)
    case invalidValue(file: String, field: String, reason: String)
    case unknownField(file: String, field: String)
    case missingTensor(file: String, tensor: String)
    case shapeMismatch(file: String, tensor: String, expected: [Int], actual: [Int])
    case unexpectedTensors(file: String, names: [String])
    case nonFiniteWeights(file: String, tensor: String)
    case invalidInput(String)

    public var description: String {
        switch self {
        case let .missingFile(path, hint): return "\(path): not found; \(hint)"
        case let .invalidJSON(path, reason): return "\(path): invalid JSON (\(reason))"
        case let .unsupportedValue(file, field, value, supported):
            return "\(file): \(field) = \(value) is not supported (supported: \(supported))"
        case let .invalidValue(file, field, reason): return "\(file): \(field): \(reason)"
        case let .unknownField(file, field):
            return "\(file): unknown config field '\(field)'; this version of ptqd does not know what it means, so it refuses rather than ignore it"
        case let .missingTensor(file, tensor):
            return "\(file): missing tensor '\(tensor)' required by the config (config and weights do not match)"
        case let .shapeMismatch(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)' has shape \(actual) but the config implies \(expected)"
        case let .unexpectedTensors(file, names):
            let shown = names.prefix(3).joined(separator: ", ")
            return "\(file): \(names.count) tensor(s) not used by the config (\(shown)\(names.count > 3 ? ", …" : "")); config and weights do not match"
        case let .nonFiniteWeights(file, tensor): return "\(file): tensor '\(tensor)' contains NaN or Inf"
        case let .invalidInput(message): return message
        }
    }
}
