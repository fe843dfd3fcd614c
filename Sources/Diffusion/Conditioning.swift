//===--- Conditioning.swift - what a denoiser is conditioned on, as a value ---===//
//
// A batch of N rows is conditioned on nothing, on one class label per row, or on context tokens
// `[N, L, D]` (the `encoder_hidden_states` of a cross-attention UNet). Classifier-free guidance needs the
// "null" form of each: the null class label, or a null context `[1, L, D]` repeated over the rows.
// `ConditioningSpace` is the one place that decides a model's null class and how many real classes it has.
//
//===----------------------------------------------------------------------===//

import TensorCore

/// The conditioning of one batch of N network rows.
public enum Conditioning {
    case none
    /// One class label per row.
    case classes([Int])
    /// Cross-attention context `[N, L, D]` fp32.
    case context(Tensor)
    /// Class embedding vectors `[N, W]` fp32 (`class_embed_type: "identity"` UNets).
    case embeddings(Tensor)

    /// Rows this conditioning covers (nil for `.none`, which fits any batch).
    public var rows: Int? {
        switch self {
        case .none: return nil
        case let .classes(l): return l.count
        case let .context(t), let .embeddings(t): return t.shape[0]
        }
    }

    /// Rows `range`.
    public func slice(_ range: Range<Int>) -> Conditioning {
        switch self {
        case .none: return .none
        case let .classes(l): return .classes(Array(l[range]))
        case let .context(t): return .context(t.slice(batch: range))
        case let .embeddings(t): return .embeddings(t.slice(batch: range))
        }
    }

    /// Row-wise concatenation of parts of the same kind (`.none` with `.none`).
    public static func concatenate(_ parts: [Conditioning]) throws -> Conditioning {
        guard let first = parts.first else { return .none }
        switch first {
        case .none:
            guard parts.allSatisfy({ if case .none = $0 { return true }; return false }) else { break }
            return .none
        case .classes:
            var all: [Int] = []
            for p in parts { guard case let .classes(l) = p else { return try mismatch() }; all += l }
            return .classes(all)
        case .context:
            return .context(try stack(parts, what: "contexts of different shapes") { if case let .context(t) = $0 { return t }; return nil })
        case .embeddings:
            return .embeddings(try stack(parts, what: "class embeddings of different widths") { if case let .embeddings(t) = $0 { return t }; return nil })
        }
        return try mismatch()
        func mismatch() throws -> Conditioning { throw kindMismatch }
    }

    private static var kindMismatch: ModelError { .invalidInput("cannot batch different kinds of conditioning together") }

    /// The tensors `tensor` extracts from every part, concatenated on the batch axis (equal trailing shapes required).
    private static func stack(_ parts: [Conditioning], what: String, _ tensor: (Conditioning) -> Tensor?) throws -> Tensor {
        var ts: [Tensor] = []
        for p in parts {
            guard let t = tensor(p) else { throw kindMismatch }
            ts.append(t)
        }
        guard Set(ts.map { Array($0.shape.dropFirst()) }).count == 1 else {
            throw ModelError.invalidInput("\(what) cannot share a batch: \(ts.map(\.shape))")
        }
        return Tensor.concatenate(batch: ts)
    }
}

/// The conditioning a network accepts.
public enum ConditioningKind: Equatable, Sendable {
    case unconditional
    /// Integer labels; `tableSize` is the class-embedding table's size (nil: labels go through a sinusoidal
    /// embedding, `class_embed_type: "timestep"`, so there is no table).
    case classLabels(tableSize: Int?)
    /// Context tokens `[N, L, width]`.
    case context(width: Int)
    /// Class embedding vectors `[N, width]` added to the time embedding (`class_embed_type: "identity"`): reachable
    /// only through the network's own call (`UNet2D.callAsFunction(_:timesteps:condition:)`); samplers refuse it.
    case classEmbeddings(width: Int)
}

/// The null conditioning of classifier-free guidance.
public enum NullConditioning {
    case nullClass(Int)
    /// `[1, L, D]`, repeated over the rows.
    case nullContext(Tensor)

    /// The null conditioning for `n` rows.
    public func rows(_ n: Int) -> Conditioning {
        switch self {
        case let .nullClass(c): return .classes([Int](repeating: c, count: n))
        case let .nullContext(t):
            let per = t.count
            let out = Tensor(shape: [n] + t.shape.dropFirst())
            for i in 0..<n { (out.data + i * per).update(from: t.data, count: per) }
            return .context(out)
        }
    }
}

/// A model's conditioning, resolved once: its kind, the null form used for guidance, and the real classes.
///
/// Rules (the only place they live):
/// - class table of size K: the null class is `--null-class`, else K − 1; the real classes are K − 1 when the
///   null class is the table's last entry (10 classes + null class 10, as cin256 and the bundled models), else K;
/// - labels without a table (`class_embed_type: "timestep"`): guidance needs an explicit null class; real classes 0
///   (callers must name the class);
/// - context: guidance needs a null context; no classes;
/// - unconditional: no null form, guidance does not apply.
public struct ConditioningSpace {
    public let kind: ConditioningKind
    /// What the unconditional half of a guided batch gets (nil: no guidance possible or needed).
    public let null: NullConditioning?
    /// The resolved null class (class-label models with one).
    public var nullClass: Int? { if case let .nullClass(c)? = null { return c }; return nil }
    /// Classes a user can ask for (0 for models that do not take labels from a table).
    public let realClasses: Int

    /// - Parameters:
    ///   - requestedNullClass: `--null-class` (nil = the default).
    ///   - nullContext: `[1, L, D]` for context models (nil = none given).
    ///   - guidance: the guidance scale the caller will use (1 = off); guidance ≠ 1 without a null form throws.
    public init(kind: ConditioningKind, requestedNullClass: Int? = nil, nullContext: Tensor? = nil, guidance: Float = 1) throws {
        self.kind = kind
        switch kind {
        case .unconditional:
            null = nil; realClasses = 0
        case let .classLabels(table?):
            let nc = requestedNullClass ?? (table - 1)
            guard nc >= 0 && nc < table else { throw ModelError.invalidInput("--null-class \(nc) is out of range 0..<\(table)") }
            null = .nullClass(nc)
            realClasses = (nc == table - 1 && table > 1) ? table - 1 : table
        case .classLabels(nil):
            if guidance != 1 && requestedNullClass == nil {
                throw ModelError.invalidInput("this model's class embedding has no table; pass --null-class N for guidance or --guidance 1")
            }
            null = requestedNullClass.map { .nullClass($0) }
            realClasses = 0
        case let .context(width):
            if let c = nullContext {
                guard c.shape.count == 3, c.shape[0] == 1, c.shape[2] == width else {
                    throw ModelError.invalidInput("the null context must be [1, L, \(width)], got \(c.shape)")
                }
                null = .nullContext(c)
            } else {
                if guidance != 1 { throw ModelError.invalidInput("guidance needs a null context (null_context [1, L, \(width)]); pass one or use --guidance 1") }
                null = nil
            }
            realClasses = 0
        case let .classEmbeddings(width):
            throw ModelError.invalidInput("this model's class embedding is 'identity' (it is conditioned on [N, \(width)] embedding vectors, not class labels): ptqd's samplers cannot supply them; use a model with num_class_embeds or a class_embedder/")
        }
    }

    /// Whether the model takes conditioning at all.
    public var isConditional: Bool { kind != .unconditional }

    /// Checks `c` fits this model for a batch of `n` rows.
    public func validate(_ c: Conditioning, rows n: Int) throws {
        switch (kind, c) {
        case (.unconditional, .none): return
        case (.unconditional, _): throw ModelError.invalidInput("this model is unconditional: do not pass class labels or a context")
        case let (.classLabels(table), .classes(l)):
            guard l.count == n else { throw ModelError.invalidInput("got \(l.count) class labels for a batch of \(n)") }
            if let table, let bad = l.first(where: { $0 < 0 || $0 >= table }) {
                throw ModelError.invalidInput("class label \(bad) is out of range 0..<\(table)")
            }
        case let (.context(width), .context(t)):
            guard t.shape.count == 3, t.shape[0] == n, t.shape[2] == width else {
                throw ModelError.invalidInput("the context must be [\(n), L, \(width)], got \(t.shape)")
            }
        case (.classLabels, _): throw ModelError.invalidInput("this model needs one class label per image")
        case (.context, _): throw ModelError.invalidInput("this model needs a cross-attention context [N, L, D]")
        case let (.classEmbeddings(w), .embeddings(t)):
            guard t.shape == [n, w] else { throw ModelError.invalidInput("class embeddings must be [\(n), \(w)], got \(t.shape)") }
        case let (.classEmbeddings(w), _): throw ModelError.invalidInput("this model needs [N, \(w)] class embedding vectors (identity class embedding)")
        }
    }
}

extension ConditioningKind: CustomStringConvertible {
    /// "unconditional", "class labels (table of 11)", "class labels (sinusoidal, no table)", "context [N, L, 768]".
    public var description: String {
        switch self {
        case .unconditional: return "unconditional"
        case let .classLabels(n?): return "class labels (table of \(n))"
        case .classLabels(nil): return "class labels (sinusoidal, no table)"
        case let .context(w): return "context [N, L, \(w)]"
        case let .classEmbeddings(w): return "class embedding vectors [N, \(w)] (identity)"
        }
    }
}
