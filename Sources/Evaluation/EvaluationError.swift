//===--- EvaluationError.swift - every way evaluation can fail, one line each ----===//

/// An error from the evaluation module: datasets, the feature network, metrics, images, reports.
///
/// `description` is always one line that names the file (where there is one), says what is wrong
/// and, where the user can fix it, what to do.
public enum EvaluationError: Error, CustomStringConvertible, Equatable {
    // MARK: Dataset files
    /// A dataset file does not exist.
    case datasetFileMissing(path: String)
    /// A file could not be read (`reason` = OS error).
    case cannotRead(path: String, reason: String)
    /// A gzip stream is corrupt or truncated (`reason` says where and what).
    case corruptGzip(path: String, reason: String)
    /// An IDX file's magic number is not the expected one (0x00000801 labels, 0x00000803 images).
    case badIDXMagic(path: String, found: UInt32, expected: UInt32)
    /// An IDX file's payload size does not match its header (`expected`/`actual` bytes).
    case idxSizeMismatch(path: String, expectedBytes: Int, actualBytes: Int)
    /// An IDX file holds a different number of items than expected (images vs labels, or the split's size).
    case idxCountMismatch(path: String, expected: Int, actual: Int)
    /// An IDX image file has images of an unexpected size.
    case idxImageSize(path: String, rows: Int, columns: Int)
    /// A label file holds a label outside `0..<classes`.
    case invalidLabel(path: String, index: Int, label: Int, classes: Int)

    // MARK: Sampling plans
    /// `n` samples cannot be split equally over `classes` classes.
    case notDivisible(n: Int, classes: Int)
    /// A class has no samples where at least one is needed (`context` says where).
    case emptyClass(label: Int, context: String)
    /// A count or option is out of range (`what` names it, `reason` says the valid range).
    case invalidArgument(what: String, reason: String)

    // MARK: Feature network
    /// The feature network's `config.json` is missing, unreadable or inconsistent.
    case featureNetworkConfig(path: String, reason: String)
    /// The feature network's weights are missing or have the wrong shape (`reason` from the reader).
    case featureNetworkWeights(path: String, reason: String)
    /// A tensor passed in has the wrong shape.
    case shapeMismatch(what: String, expected: String, actual: [Int])

    // MARK: Metrics
    /// A value is NaN or infinite (`what` names the array, `index` the first bad element).
    case nonFinite(what: String, index: Int)
    /// Too few samples for a statistic (`minimum` needed).
    case tooFewSamples(what: String, count: Int, minimum: Int)
    /// Two feature sets / statistics have different dimensions.
    case dimensionMismatch(what: String, a: Int, b: Int)
    /// A LAPACK routine failed (`info` as returned).
    case lapackFailed(routine: String, info: Int)
    /// A cached statistics file is unreadable, has the wrong shapes or does not match its key.
    case statisticsFile(path: String, reason: String)

    // MARK: Output
    /// libpng could not encode or decode an image (`message` from libpng).
    case png(path: String, message: String)
    /// Writing an output file failed; nothing was left at `path` (`reason` = step and OS error).
    case writeFailed(path: String, reason: String)

    public var description: String {
        switch self {
        case let .datasetFileMissing(path):
            return "\(path): dataset file not found; install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass the directory holding the four *-ubyte.gz files"
        case let .cannotRead(path, reason):
            return "\(path): cannot read file: \(reason)"
        case let .corruptGzip(path, reason):
            return "\(path): corrupt gzip data (\(reason)); the file is damaged, reinstall Debian's dataset-fashion-mnist"
        case let .badIDXMagic(path, found, expected):
            return "\(path): not an IDX file of the expected kind: magic 0x\(hex8(found)), expected 0x\(hex8(expected))"
        case let .idxSizeMismatch(path, expected, actual):
            return "\(path): IDX payload is \(actual) bytes but its header implies \(expected) (truncated or damaged file)"
        case let .idxCountMismatch(path, expected, actual):
            return "\(path): holds \(actual) items, expected \(expected) (images and labels files of different splits?)"
        case let .idxImageSize(path, rows, columns):
            return "\(path): images are \(rows)x\(columns), expected 28x28 Fashion-MNIST images"
        case let .invalidLabel(path, index, label, classes):
            return "\(path): label \(label) at index \(index) is outside 0..<\(classes)"
        case let .notDivisible(n, classes):
            return "n = \(n) cannot be split equally over \(classes) classes; use a multiple of \(classes) (e.g. \(max(classes, (n / classes) * classes)))"
        case let .emptyClass(label, context):
            return "class \(label) has no samples (\(context))"
        case let .invalidArgument(what, reason):
            return "invalid \(what): \(reason)"
        case let .featureNetworkConfig(path, reason):
            return "\(path): bad feature network config: \(reason)"
        case let .featureNetworkWeights(path, reason):
            return "\(path): bad feature network weights: \(reason)"
        case let .shapeMismatch(what, expected, actual):
            return "\(what): shape [\(actual.map(String.init).joined(separator: ","))] but \(expected) was expected"
        case let .nonFinite(what, index):
            return "\(what): element \(index) is NaN or infinite"
        case let .tooFewSamples(what, count, minimum):
            return "\(what): \(count) samples, at least \(minimum) needed"
        case let .dimensionMismatch(what, a, b):
            return "\(what): dimensions differ (\(a) vs \(b)); were they computed with the same feature network?"
        case let .lapackFailed(routine, info):
            return "LAPACK \(routine) failed with info = \(info)" + (info > 0 ? " (no convergence)" : " (illegal argument)")
        case let .statisticsFile(path, reason):
            return "\(path): bad FID statistics file: \(reason)"
        case let .png(path, message):
            return "\(path): PNG error: \(message)"
        case let .writeFailed(path, reason):
            return "\(path): write failed, nothing written: \(reason)"
        }
    }
}

func hex8(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 8 - s.count)) + s
}
