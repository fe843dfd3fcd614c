import Diffusion
import XCTest

/// The one definition of a model's real classes (every table entry but a trailing null class).
final class ClassCountTests: XCTestCase {
    func testRealClassCount() throws {
        let table = try DiffusionModel.load(Fixtures.model("cond_attn_28")).unet    // 11 entries
        XCTAssertEqual(table.realClassCount(nullClass: 10), 10, "null class is the last entry")
        XCTAssertEqual(table.realClassCount(nullClass: 3), 11, "a null class inside the table is also a real label")
        XCTAssertEqual(table.realClassCount(nullClass: nil), 11)
        XCTAssertEqual(try DiffusionModel.load(Fixtures.model("uncond_plain_16")).unet.realClassCount(nullClass: nil), 0)
        XCTAssertEqual(try DiffusionModel.load(Fixtures.model("vpred_tscls_20")).unet.realClassCount(nullClass: 10), 0,
                       "a timestep class embedding has no table")
    }
}
