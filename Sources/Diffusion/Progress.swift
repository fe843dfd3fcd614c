//===--- Progress.swift - step/total, rate and ETA on stderr ---------------===//

import Foundation

/// Prints `label step/total · rate unit/s · ETA` to stderr, at most every `interval` seconds
/// and always at the end. Results never go to stderr.
public final class ProgressReporter {
    public let label: String
    public let total: Int
    public let unit: String
    let interval: Double
    let start = Date()
    var lastPrint = Date.distantPast
    public private(set) var done = 0
    let enabled: Bool

    public init(label: String, total: Int, unit: String = "steps", interval: Double = 1.0, enabled: Bool = true) {
        self.label = label; self.total = total; self.unit = unit; self.interval = interval; self.enabled = enabled
    }

    /// Advances by `n` units (e.g. images × steps).
    public func advance(_ n: Int = 1, note: String = "") {
        done += n
        guard enabled else { return }
        let now = Date()
        if now.timeIntervalSince(lastPrint) < interval && done < total { return }
        lastPrint = now
        let el = now.timeIntervalSince(start)
        // Under a quarter second (the first report, or work restored from a checkpoint) a rate means nothing.
        let measured = el >= 0.25
        let rate = measured ? Double(done) / el : 0
        let eta = rate > 0 ? Double(total - done) / rate : 0
        let line = String(format: "%@ %d/%d · %@ %@/s · elapsed %@ · ETA %@%@", label, done, total,
                          measured ? String(format: "%.1f", rate) : "–", unit,
                          Self.format(el), done >= total ? "0s" : measured ? Self.format(eta) : "–",
                          note.isEmpty ? "" : " · " + note)
        FileHandle.standardError.write((line + "\n").data(using: .utf8)!)
    }

    /// Seconds since creation.
    public var elapsed: Double { Date().timeIntervalSince(start) }

    static func format(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%dh%02dm", t / 3600, (t % 3600) / 60)
            : t >= 60 ? String(format: "%dm%02ds", t / 60, t % 60) : "\(t)s"
    }
}
