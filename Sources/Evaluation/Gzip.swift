//===--- Gzip.swift - gzip (RFC 1952) / DEFLATE (RFC 1951) decompression in Swift ---===//
//
// Why this exists: the dataset files are gzip-compressed. Foundation on Linux has no
// decompression, the package has no zlib system-library target, and libpng's public header does
// not include zlib.h (it only links libz privately), so zlib's API is not reachable from Swift
// here. This is a small, table-driven inflater; every member's CRC-32 and length (ISIZE) are
// verified, so a damaged file cannot decode silently to wrong bytes.
//
//===----------------------------------------------------------------------===//

/// A decompression failure: `reason` says what and where (byte offset in the compressed input).
public struct GzipError: Error, CustomStringConvertible, Equatable {
    public let reason: String
    public var description: String { reason }
}

public enum Gzip {
    /// Decompresses a gzip file's bytes (one or more concatenated members).
    /// - Throws: `GzipError` for a bad header, a corrupt or truncated deflate stream, or a CRC-32 /
    ///   length mismatch.
    public static func decompress(_ input: [UInt8]) throws -> [UInt8] {
        try input.withUnsafeBufferPointer { try decompress($0) }
    }

    public static func decompress(_ input: UnsafeBufferPointer<UInt8>) throws -> [UInt8] {
        guard input.count >= 18 else {
            throw GzipError(reason: "\(input.count) bytes is too short for a gzip file (at least 18)")
        }
        // The last member's ISIZE is a good capacity guess (exact for single-member files < 4 GiB).
        let n = input.count
        let isize = Int(UInt32(input[n - 4]) | UInt32(input[n - 3]) << 8 | UInt32(input[n - 2]) << 16 | UInt32(input[n - 1]) << 24)
        var inflater = Inflater(input: input, capacity: min(max(isize, 1024), 1 << 31))
        defer { inflater.release() }
        var member = 0
        repeat {
            let start = inflater.outLength
            try inflater.readGzipHeader(member: member)
            try inflater.inflate()
            try inflater.checkTrailer(memberStart: start)
            member += 1
            // Tolerate zero padding after the last member (some tools write it), nothing else.
            if inflater.pos < n && input[inflater.pos] != 0x1f {
                if input[inflater.pos...].allSatisfy({ $0 == 0 }) { break }
                throw GzipError(reason: "unexpected data at byte \(inflater.pos) after gzip member \(member)")
            }
        } while inflater.pos < n
        return Array(UnsafeBufferPointer(start: inflater.out, count: inflater.outLength))
    }

    /// CRC-32 (IEEE 802.3, as in gzip and PNG) of `bytes`, continuing from `crc`.
    /// Contiguous collections (arrays, array slices) take the pointer loop below.
    public static func crc32<C: Collection>(_ bytes: C, crc: UInt32 = 0) -> UInt32 where C.Element == UInt8 {
        if let fast = bytes.withContiguousStorageIfAvailable({ b in b.baseAddress.map { crc32($0, count: b.count, crc: crc) } ?? crc }) {
            return fast
        }
        var c = ~crc
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return ~c
    }

    static func crc32(_ p: UnsafePointer<UInt8>, count: Int, crc: UInt32 = 0) -> UInt32 {
        var c = ~crc
        crcTable.withUnsafeBufferPointer { t in
            for i in 0..<count { c = t[Int((c ^ UInt32(p[i])) & 0xFF)] ^ (c >> 8) }
        }
        return ~c
    }

    static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = (c & 1) != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }
}

// MARK: - Huffman tables

/// A single-level canonical Huffman decoding table indexed by the next `bits` input bits (LSB first).
/// Entry = symbol << 8 | code length; 0 = no code (invalid input).
struct HuffmanTable {
    var entries: [UInt32]
    var bits: Int

    /// Builds the table from code lengths (0 = unused symbol). Returns nil if the lengths are
    /// over-subscribed (not a prefix code). Incomplete codes are allowed; unused slots stay invalid.
    init?(lengths: UnsafeBufferPointer<UInt8>) {
        var count = [Int](repeating: 0, count: 16)
        var maxLen = 0
        for l in lengths where l > 0 { count[Int(l)] += 1; maxLen = max(maxLen, Int(l)) }
        bits = max(maxLen, 1)
        entries = [UInt32](repeating: 0, count: 1 << bits)
        if maxLen == 0 { return }
        var left = 1
        for len in 1...15 {
            left <<= 1
            left -= count[len]
            if left < 0 { return nil }
        }
        var next = [Int](repeating: 0, count: 16)
        var code = 0
        for len in 1...15 {
            code = (code + count[len - 1]) << 1
            next[len] = code
        }
        next[0] = 0
        let size = 1 << bits
        entries.withUnsafeMutableBufferPointer { table in
            for sym in 0..<lengths.count {
                let len = Int(lengths[sym])
                if len == 0 { continue }
                let c = next[len]
                next[len] += 1
                var rev = 0
                for i in 0..<len where (c >> i) & 1 != 0 { rev |= 1 << (len - 1 - i) }
                let e = UInt32(sym) << 8 | UInt32(len)
                var idx = rev
                while idx < size { table[idx] = e; idx += 1 << len }
            }
        }
    }
}

// MARK: - Inflater

private let lengthBase: [Int] = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31,
                                 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
private let lengthExtra: [Int] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2,
                                  3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
private let distBase: [Int] = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193,
                               257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577]
private let distExtra: [Int] = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6,
                                7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13]
private let codeLengthOrder: [Int] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]

private let fixedTables: (HuffmanTable, HuffmanTable) = {
    var lit = [UInt8](repeating: 8, count: 288)
    for i in 144..<256 { lit[i] = 9 }
    for i in 256..<280 { lit[i] = 7 }
    let dist = [UInt8](repeating: 5, count: 30)
    let l = lit.withUnsafeBufferPointer { HuffmanTable(lengths: $0)! }
    let d = dist.withUnsafeBufferPointer { HuffmanTable(lengths: $0)! }
    return (l, d)
}()

struct Inflater {
    let input: UnsafeBufferPointer<UInt8>
    var pos = 0
    var bitBuffer: UInt64 = 0
    var bitCount = 0
    var out: UnsafeMutablePointer<UInt8>
    var outCapacity: Int
    var outLength = 0

    init(input: UnsafeBufferPointer<UInt8>, capacity: Int) {
        self.input = input
        outCapacity = capacity
        out = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
    }

    func release() { out.deallocate() }

    private func fail(_ what: String) -> GzipError {
        GzipError(reason: "\(what) at compressed byte \(pos)")
    }

    // MARK: Bits

    @inline(__always) mutating func refill() {
        while bitCount <= 56 && pos < input.count {
            bitBuffer |= UInt64(input[pos]) << UInt64(bitCount)
            pos += 1
            bitCount += 8
        }
    }

    @inline(__always) mutating func bits(_ n: Int) throws -> Int {
        if bitCount < n {
            refill()
            if bitCount < n { throw fail("unexpected end of data (truncated file)") }
        }
        let v = Int(bitBuffer & ((1 << UInt64(n)) - 1))
        bitBuffer >>= UInt64(n)
        bitCount -= n
        return v
    }

    @inline(__always) mutating func decode(_ table: UnsafeBufferPointer<UInt32>, _ tableBits: Int) throws -> Int {
        if bitCount < tableBits { refill() }
        let e = table[Int(bitBuffer & UInt64((1 << tableBits) - 1))]
        let len = Int(e & 0xFF)
        if len == 0 { throw fail(bitCount < tableBits ? "unexpected end of data (truncated file)" : "invalid Huffman code") }
        if len > bitCount { throw fail("unexpected end of data (truncated file)") }
        bitBuffer >>= UInt64(len)
        bitCount -= len
        return Int(e >> 8)
    }

    /// Returns whole unread bytes held in the bit buffer to the input (after discarding partial bits).
    mutating func alignToByte() {
        let drop = bitCount & 7
        bitBuffer >>= UInt64(drop)
        bitCount -= drop
        pos -= bitCount / 8
        bitBuffer = 0
        bitCount = 0
    }

    // MARK: Output

    @inline(__always) mutating func reserve(_ extra: Int) throws {
        if outLength + extra <= outCapacity { return }
        var cap = outCapacity
        while cap < outLength + extra { cap *= 2 }
        guard cap <= 1 << 34 else { throw fail("output larger than 16 GiB") }
        let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: cap)
        bigger.update(from: out, count: outLength)
        out.deallocate()
        out = bigger
        outCapacity = cap
    }

    // MARK: gzip framing

    mutating func readGzipHeader(member: Int) throws {
        alignToByte()
        let start = pos
        func byte() throws -> Int {
            guard pos < input.count else { throw GzipError(reason: "gzip header of member \(member + 1) is truncated at byte \(pos)") }
            defer { pos += 1 }
            return Int(input[pos])
        }
        guard try byte() == 0x1f, try byte() == 0x8b else {
            throw GzipError(reason: "not a gzip file: bad magic bytes at offset \(start)")
        }
        let method = try byte()
        guard method == 8 else { throw GzipError(reason: "unsupported gzip compression method \(method) (only deflate = 8)") }
        let flags = try byte()
        guard flags & 0xE0 == 0 else { throw GzipError(reason: "reserved gzip header flags set (0x\(String(flags, radix: 16)))") }
        for _ in 0..<6 { _ = try byte() }          // MTIME, XFL, OS
        if flags & 0x04 != 0 {                      // FEXTRA
            let xlen = try byte() | (try byte()) << 8
            for _ in 0..<xlen { _ = try byte() }
        }
        if flags & 0x08 != 0 { while try byte() != 0 {} }   // FNAME
        if flags & 0x10 != 0 { while try byte() != 0 {} }   // FCOMMENT
        if flags & 0x02 != 0 { _ = try byte(); _ = try byte() }   // FHCRC
    }

    mutating func checkTrailer(memberStart: Int) throws {
        alignToByte()
        guard pos + 8 <= input.count else { throw GzipError(reason: "gzip trailer truncated at byte \(pos) (truncated file)") }
        func u32(_ at: Int) -> UInt32 {
            UInt32(input[at]) | UInt32(input[at + 1]) << 8 | UInt32(input[at + 2]) << 16 | UInt32(input[at + 3]) << 24
        }
        let crc = u32(pos), size = u32(pos + 4)
        pos += 8
        let produced = outLength - memberStart
        guard UInt32(truncatingIfNeeded: produced) == size else {
            throw GzipError(reason: "decompressed \(produced) bytes but the gzip trailer says \(size)")
        }
        let actual = Gzip.crc32(out + memberStart, count: produced)
        guard actual == crc else {
            throw GzipError(reason: "CRC-32 mismatch: data has 0x\(hex8(actual)), trailer says 0x\(hex8(crc))")
        }
    }

    // MARK: DEFLATE

    mutating func inflate() throws {
        var final = false
        while !final {
            final = try bits(1) == 1
            switch try bits(2) {
            case 0: try stored()
            case 1: try codes(fixedTables.0, fixedTables.1)
            case 2:
                let (lit, dist) = try dynamicTables()
                try codes(lit, dist)
            default: throw fail("invalid deflate block type 3")
            }
        }
    }

    mutating func stored() throws {
        alignToByte()
        guard pos + 4 <= input.count else { throw fail("unexpected end of data (truncated file)") }
        let len = Int(input[pos]) | Int(input[pos + 1]) << 8
        let nlen = Int(input[pos + 2]) | Int(input[pos + 3]) << 8
        pos += 4
        guard len == (~nlen & 0xFFFF) else { throw fail("stored block length check failed") }
        guard pos + len <= input.count else { throw fail("unexpected end of data (truncated file)") }
        try reserve(len)
        (out + outLength).update(from: input.baseAddress! + pos, count: len)
        outLength += len
        pos += len
    }

    mutating func dynamicTables() throws -> (HuffmanTable, HuffmanTable) {
        let nlen = try bits(5) + 257, ndist = try bits(5) + 1, ncode = try bits(4) + 4
        guard nlen <= 286 && ndist <= 30 else { throw fail("bad dynamic block header (\(nlen) length codes, \(ndist) distance codes)") }
        var clLengths = [UInt8](repeating: 0, count: 19)
        for i in 0..<ncode { clLengths[codeLengthOrder[i]] = UInt8(try bits(3)) }
        guard let cl = clLengths.withUnsafeBufferPointer({ HuffmanTable(lengths: $0) }) else {
            throw fail("over-subscribed code-length code")
        }
        var lengths = [UInt8](repeating: 0, count: nlen + ndist)
        var i = 0
        try cl.entries.withUnsafeBufferPointer { clt in
            while i < nlen + ndist {
                let sym = try decode(clt, cl.bits)
                if sym < 16 { lengths[i] = UInt8(sym); i += 1; continue }
                var value: UInt8 = 0
                let repeatCount: Int
                switch sym {
                case 16:
                    guard i > 0 else { throw fail("repeat of a code length with no previous length") }
                    value = lengths[i - 1]
                    repeatCount = 3 + (try bits(2))
                case 17: repeatCount = 3 + (try bits(3))
                default: repeatCount = 11 + (try bits(7))
                }
                guard i + repeatCount <= nlen + ndist else { throw fail("code lengths overflow the alphabet") }
                for _ in 0..<repeatCount { lengths[i] = value; i += 1 }
            }
        }
        guard lengths[256] != 0 else { throw fail("dynamic block has no end-of-block code") }
        let lit = lengths.withUnsafeBufferPointer { HuffmanTable(lengths: UnsafeBufferPointer(rebasing: $0[0..<nlen])) }
        let dist = lengths.withUnsafeBufferPointer { HuffmanTable(lengths: UnsafeBufferPointer(rebasing: $0[nlen...])) }
        guard let l = lit else { throw fail("over-subscribed literal/length code") }
        guard let d = dist else { throw fail("over-subscribed distance code") }
        return (l, d)
    }

    mutating func codes(_ lit: HuffmanTable, _ dist: HuffmanTable) throws {
        try lit.entries.withUnsafeBufferPointer { lt in
            try dist.entries.withUnsafeBufferPointer { dt in
                while true {
                    let sym = try decode(lt, lit.bits)
                    if sym < 256 {
                        if outLength == outCapacity { try reserve(1) }
                        out[outLength] = UInt8(sym)
                        outLength += 1
                        continue
                    }
                    if sym == 256 { return }
                    let li = sym - 257
                    guard li < 29 else { throw fail("invalid length symbol \(sym)") }
                    let length = lengthBase[li] + (try bits(lengthExtra[li]))
                    let ds = try decode(dt, dist.bits)
                    guard ds < 30 else { throw fail("invalid distance symbol \(ds)") }
                    let distance = distBase[ds] + (try bits(distExtra[ds]))
                    guard distance <= outLength else { throw fail("distance \(distance) reaches before the start of the output") }
                    try reserve(length)
                    let dst = out + outLength
                    let src = dst - distance
                    if distance >= length {
                        dst.update(from: src, count: length)
                    } else {
                        for k in 0..<length { dst[k] = src[k] }
                    }
                    outLength += length
                }
            }
        }
    }
}
