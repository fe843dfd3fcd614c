//===--- SampleCheckpoint.swift - resumable sampling for `ptqd evaluate` -------===//

import Foundation
import SafeTensors
import TensorCore

/// The samples of one evaluation run so far, saved at batch ends (at most every 30 s, and always when the
/// run finishes or its time budget is spent) so that an interrupted (or
/// `--time-budget`-limited) `ptqd evaluate` continues where it stopped instead of starting over.
///
/// File: safetensors with one tensor `samples` `[count, C, H, W]` fp32 — images `0..<count` of the run in
/// index order — and metadata `key` (what is being sampled; a checkpoint with another key is ignored and
/// later overwritten) and `seconds` (sampling wall time summed over every run that contributed).
/// Written to a temporary file and renamed, so a kill at any moment leaves the previous checkpoint intact.
/// Resuming reproduces an uninterrupted run exactly: each image's noise comes from its own stream
/// (`BatchNoise`) and the key pins the batch size, so every batch sees the same rows.
struct SampleCheckpoint {
    let path: String
    let key: String
    /// `[C, H, W]` of one image.
    let imageShape: [Int]

    /// The saved prefix, if the file exists, matches `key` and is readable; nil otherwise.
    func load() -> (images: Tensor, seconds: Double)? {
        guard let f = try? SafeTensorsFile(path: path), f.metadata["key"] == key,
              let seconds = Double(f.metadata["seconds"] ?? ""), seconds.isFinite, seconds >= 0,
              let info = try? f.info("samples"), info.shape.count == 4, Array(info.shape.dropFirst()) == imageShape,
              info.shape[0] >= 1, let v = try? f.floats("samples", expectedShape: info.shape) else { return nil }
        let (c, h, w) = (imageShape[0], imageShape[1], imageShape[2])
        return (Tensor.fromNCHW(v, n: info.shape[0], c: c, h: h, w: w), seconds)
    }

    /// Saves `images` `[count, H, W, C]` (the first `count` images of the run) and the wall time so far.
    func save(_ images: Tensor, seconds: Double) throws {
        var w = SafeTensorsWriter(metadata: ["key": key, "seconds": "\(seconds)"])
        try w.add("samples", floats: images.toNCHW(), shape: [images.shape[0]] + imageShape)
        try w.write(to: path)
    }
}
