//===--- Gzip.swift - gzip decompression and CRC-32 through zlib --------------===//
//
// Fashion-MNIST ships as .gz IDX files. zlib (Debian `zlib1g-dev`, already a dependency of libpng)
// inflates them; concatenated members are decoded one after another, zero padding after the last
// member is tolerated, anything else is an error. CRC-32 is zlib's (IEEE 802.3, as in gzip and PNG).
//
//===----------------------------------------------------------------------===//

import CZlib

/// A gzip stream could not be decoded: the reason names the problem.
public struct GzipError: Error, CustomStringConvertible, Equatable {
    public let reason: String
    public var description: String { reason }
}

public enum Gzip {
    /// Decompresses a gzip file's bytes (one or more concatenated members).
    /// - Throws: `GzipError` for a bad header (magic bytes), a corrupt or truncated deflate stream, or a CRC-32 /
    ///   length mismatch.
    public static func decompress(_ input: [UInt8]) throws -> [UInt8] {
        try input.withUnsafeBufferPointer { try decompress($0) }
    }

    public static func decompress(_ input: UnsafeBufferPointer<UInt8>) throws -> [UInt8] {
        guard input.count >= 18 else {
            throw GzipError(reason: "\(input.count) bytes is too short for a gzip file (at least 18)")
        }
        let n = input.count
        var out: [UInt8] = []
        // The last member's ISIZE is a good capacity guess (exact for single-member files < 4 GiB).
        let isize = Int(UInt32(input[n - 4]) | UInt32(input[n - 3]) << 8 | UInt32(input[n - 2]) << 16 | UInt32(input[n - 1]) << 24)
        out.reserveCapacity(min(max(isize, 1024), 1 << 31))
        var pos = 0, member = 0
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while pos < n {
            guard n - pos >= 2, input[pos] == 0x1f, input[pos + 1] == 0x8b else {
                if member > 0 && input[pos...].allSatisfy({ $0 == 0 }) { break }  // zero padding after the last member
                throw GzipError(reason: member == 0 ? "not a gzip file (magic bytes \(String(format: "%02x %02x", input[0], input[1])), expected 1f 8b)"
                                                    : "unexpected data at byte \(pos) after gzip member \(member)")
            }
            var s = z_stream()
            guard inflateInit2_(&s, 16 + MAX_WBITS, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
                throw GzipError(reason: "zlib could not start inflating")
            }
            defer { inflateEnd(&s) }
            s.next_in = UnsafeMutablePointer(mutating: input.baseAddress! + pos)
            s.avail_in = UInt32(min(n - pos, Int(UInt32.max)))
            var status: Int32 = Z_OK
            repeat {
                let produced: Int = chunk.withUnsafeMutableBufferPointer { c in
                    s.next_out = c.baseAddress
                    s.avail_out = UInt32(c.count)
                    status = inflate(&s, Z_NO_FLUSH)
                    return c.count - Int(s.avail_out)
                }
                out.append(contentsOf: chunk[0..<produced])
                if status == Z_BUF_ERROR && s.avail_in == 0 {
                    throw GzipError(reason: "gzip member \(member + 1) is truncated (the deflate stream ends early)")
                }
                guard status == Z_OK || status == Z_STREAM_END else {
                    let msg = s.msg.map { String(cString: $0) } ?? "status \(status)"
                    throw GzipError(reason: "gzip member \(member + 1): " + (msg == "incorrect data check" ? "CRC-32 mismatch (corrupt data)" :
                                                                            msg == "incorrect length check" ? "length mismatch (corrupt data)" : msg))
                }
            } while status != Z_STREAM_END
            pos = n - Int(s.avail_in)
            member += 1
        }
        return out
    }

    /// CRC-32 (IEEE 802.3, as in gzip and PNG) of `bytes`, continuing from `crc`.
    public static func crc32<C: Collection>(_ bytes: C, crc: UInt32 = 0) -> UInt32 where C.Element == UInt8 {
        if let fast = bytes.withContiguousStorageIfAvailable({ b in b.baseAddress.map { crc32($0, count: b.count, crc: crc) } ?? crc }) {
            return fast
        }
        return crc32(Array(bytes), crc: crc)
    }

    static func crc32(_ p: UnsafePointer<UInt8>, count: Int, crc: UInt32 = 0) -> UInt32 {
        var c = UInt(crc), done = 0
        while done < count {  // zlib takes a 32-bit length
            let k = min(count - done, 1 << 30)
            c = CZlib.crc32(c, p + done, UInt32(k))
            done += k
        }
        return UInt32(truncatingIfNeeded: c)
    }
}
