// Writing a file so that readers see either the old file or the complete new one, never a prefix.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The step of an atomic write that failed and the OS error it reported.
public struct AtomicWriteFailure: Error, CustomStringConvertible, Sendable {
    /// What was being done: "cannot create temporary file '…'", "write", "fsync", "close", "rename to final path".
    public let step: String
    /// `strerror(errno)` at the failure.
    public let osError: String
    /// `"<step>: <osError>"`, the text callers put in their own one-line errors.
    public var description: String { "\(step): \(osError)" }
}

/// Atomic file replacement: temporary file in the same directory, fsync, rename, directory fsync.
///
/// This is the one implementation behind ``SafeTensorsWriter/write(to:)`` and every report, image and
/// checkpoint the tool writes (Evaluation's `AtomicFile` wraps it with its own error type).
public enum AtomicWrite {
    /// Writes the concatenation of `chunks` to `"<path>.tmp-<pid>-<random>"`, fsyncs it, renames it over
    /// `path`, then fsyncs the directory (best effort), so the rename itself is durable. On any error the
    /// temporary file is removed and `path` is untouched.
    /// - Parameter chunks: the file's bytes in order (passed as separate arrays so callers need not
    ///   concatenate a header and large tensor payloads into one buffer).
    /// - Throws: ``AtomicWriteFailure`` naming the failing step.
    public static func write(_ chunks: [[UInt8]], to path: String) throws {
        let tmp = "\(path).tmp-\(getpid())-\(String(UInt64.random(in: 0 ... .max), radix: 16))"
        func failure(_ step: String) -> AtomicWriteFailure {
            AtomicWriteFailure(step: step, osError: String(cString: strerror(errno)))
        }
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw failure("cannot create temporary file '\(tmp)'") }
        var fdOpen = true
        do {
            for chunk in chunks { try writeAll(fd, chunk, failure) }
            guard fsync(fd) == 0 else { throw failure("fsync") }
            fdOpen = false
            guard close(fd) == 0 else { throw failure("close") }
            guard rename(tmp, path) == 0 else { throw failure("rename to final path") }
        } catch {
            if fdOpen { close(fd) }
            unlink(tmp)
            throw error
        }
        syncDirectory(of: path)
    }

    /// `write(2)` until every byte is written, retrying on EINTR, in chunks of at most 1 GiB.
    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], _ failure: (String) -> AtomicWriteFailure) throws {
        try bytes.withUnsafeBytes { buf in
            var done = 0
            while done < buf.count {
                let chunk = min(buf.count - done, 1 << 30)
                let n = posixWrite(fd, buf.baseAddress! + done, chunk)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw failure("write")
                }
                if n == 0 { errno = EIO; throw failure("write") }
                done += n
            }
        }
    }

    /// Best-effort fsync of the directory containing `path`.
    private static func syncDirectory(of path: String) {
        let dir: String
        if let slash = path.lastIndex(of: "/") {
            dir = slash == path.startIndex ? "/" : String(path[..<slash])
        } else {
            dir = "."
        }
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 { _ = fsync(fd); close(fd) }
    }
}

/// The C `write(2)`; a free function so the name cannot resolve to a `write` method in scope.
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, buffer, count)
}
