//===--- ProcessMemory.swift - resident memory of this process (Linux) ------===//

import Foundation

/// Resident set size and its high-water mark, from `/proc/self/status` (bytes). The high-water mark can be reset
/// to the current RSS (`/proc/self/clear_refs`, Linux ≥ 4.0), so the peak of one operation is measurable.
public enum ProcessMemory {
    /// `VmRSS` and `VmHWM` in bytes; nil where /proc is unavailable.
    public static func status() -> (resident: Int, peak: Int)? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        var rss: Int?, hwm: Int?
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let kb = Int(parts[1].split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "")
            if parts[0] == "VmRSS" { rss = kb.map { $0 * 1024 } }
            if parts[0] == "VmHWM" { hwm = kb.map { $0 * 1024 } }
        }
        guard let r = rss, let h = hwm else { return nil }
        return (r, h)
    }

    /// Resets the high-water mark to the current RSS. Returns false if the kernel refused.
    @discardableResult
    public static func resetPeak() -> Bool {
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? h.close() }
        do { try h.write(contentsOf: Data("5".utf8)) } catch { return false }
        return true
    }

    /// The peak resident memory of `body` above the RSS before it (bytes), or nil if not measurable.
    public static func peakAbove<T>(_ body: () throws -> T) rethrows -> (value: T, resident: Int?, peakAbove: Int?) {
        let before = status()?.resident
        let reset = resetPeak()
        let value = try body()
        guard reset, let b = before, let after = status() else { return (value, before, nil) }
        return (value, b, max(after.peak - b, 0))
    }
}
