import Diffusion
import TensorCore
import XCTest

/// `ConditioningSpace`: the one definition of a model's null class and real classes.
final class ClassCountTests: XCTestCase {
    func space(_ name: String, null: Int? = nil, guidance: Float = 1) throws -> ConditioningSpace {
        try ConditioningSpace(kind: try DiffusionModel.load(Fixtures.model(name)).network.conditioningKind, requestedNullClass: null, guidance: guidance)
    }

    func testRealClassCount() throws {
        XCTAssertEqual(try space("cond_attn_28", null: 10).realClasses, 10, "null class is the last entry")
        XCTAssertEqual(try space("cond_attn_28", null: 3).realClasses, 11, "a null class inside the table is also a real label")
        XCTAssertEqual(try space("cond_attn_28").realClasses, 10, "the default null class is the last entry")
        XCTAssertEqual(try space("cond_attn_28").nullClass, 10)
        XCTAssertEqual(try space("uncond_plain_16").realClasses, 0)
        XCTAssertNil(try space("uncond_plain_16").null)
        XCTAssertEqual(try space("vpred_tscls_20", null: 10).realClasses, 0, "a timestep class embedding has no table")
        XCTAssertThrowsError(try space("vpred_tscls_20", guidance: 3), "guidance without a table needs --null-class")
        XCTAssertThrowsError(try space("cond_attn_28", null: 11))
    }

    func testNullContextAndValidation() throws {
        let kind = ConditioningKind.context(width: 4)
        XCTAssertThrowsError(try ConditioningSpace(kind: kind, guidance: 3), "guidance needs a null context")
        XCTAssertThrowsError(try ConditioningSpace(kind: kind, nullContext: Tensor(shape: [1, 2, 5]), guidance: 3))
        let s = try ConditioningSpace(kind: kind, nullContext: Tensor(shape: [1, 2, 4]), guidance: 3)
        guard case let .context(t) = s.null!.rows(3) else { return XCTFail("null rows must be a context") }
        XCTAssertEqual(t.shape, [3, 2, 4])
        XCTAssertThrowsError(try s.validate(.context(Tensor(shape: [2, 2, 4])), rows: 3))
        XCTAssertThrowsError(try s.validate(.classes([1, 2, 3]), rows: 3))
        XCTAssertNoThrow(try s.validate(.context(Tensor(shape: [3, 7, 4])), rows: 3))
        let both = try Conditioning.concatenate([.classes([1]), .classes([2, 3])])
        guard case let .classes(l) = both else { return XCTFail() }
        XCTAssertEqual(l, [1, 2, 3])
        XCTAssertThrowsError(try Conditioning.concatenate([.classes([1]), .none]))
        // Contexts and class embeddings stack on the batch axis; trailing shapes and kinds must agree.
        guard case let .context(c) = try Conditioning.concatenate([.context(Tensor(shape: [1, 2, 4])), .context(Tensor(shape: [2, 2, 4]))]) else { return XCTFail() }
        XCTAssertEqual(c.shape, [3, 2, 4])
        XCTAssertThrowsError(try Conditioning.concatenate([.context(Tensor(shape: [1, 2, 4])), .context(Tensor(shape: [1, 3, 4]))]))
        guard case let .embeddings(e) = try Conditioning.concatenate([.embeddings(Tensor(shape: [2, 8])), .embeddings(Tensor(shape: [1, 8]))]) else { return XCTFail() }
        XCTAssertEqual(e.shape, [3, 8])
        XCTAssertThrowsError(try Conditioning.concatenate([.embeddings(Tensor(shape: [2, 8])), .embeddings(Tensor(shape: [1, 9]))]))
        XCTAssertThrowsError(try Conditioning.concatenate([.embeddings(Tensor(shape: [2, 8])), .context(Tensor(shape: [2, 1, 8]))]))
        // An identity class-embedding space refuses sampling; validate checks the embeddings' shape.
        XCTAssertThrowsError(try ConditioningSpace(kind: .classEmbeddings(width: 8))) { XCTAssertTrue("\($0)".contains("identity"), "\($0)") }
    }
}
