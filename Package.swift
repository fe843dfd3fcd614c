// swift-tools-version:5.9
// swift-ptqd: post-training quantization (PTQD) of diffusion models with real integer CPU kernels.
import PackageDescription

let package = Package(
    name: "swift-ptqd",
    products: [
        .executable(name: "ptqd", targets: ["ptqd"]),
        .library(name: "PTQD", targets: ["TensorCore", "SafeTensors", "Diffusion", "Evaluation", "WeightRounding", "Quantization", "Correction", "Pipeline"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // MARK: - System libraries (Debian packages; no extra flags needed)
        .systemLibrary(name: "CDNNL", path: "Sources/CDNNL", providers: [.apt(["libdnnl-dev"])]),
        .systemLibrary(name: "CPNG", path: "Sources/CPNG", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CLapack", path: "Sources/CLapack", providers: [.apt(["liblapacke-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
        // cairo with its FreeType backend draws the text of plots and grid labels (fonts: fonts-dejavu-core).
        .systemLibrary(name: "CCairo", path: "Sources/CCairo", pkgConfig: "cairo", providers: [.apt(["libcairo2-dev"])]),

        // MARK: - Memory-bound kernels in C, one body compiled per ISA (baseline, AVX2, AVX-512), chosen at run time
        .target(name: "CKernels"),

        // MARK: - Library modules (one concept each)
        .target(name: "TensorCore", dependencies: ["CDNNL", "CKernels"]),
        .target(name: "SafeTensors"),
        .target(name: "Diffusion", dependencies: ["TensorCore", "SafeTensors"]),
        .target(name: "Evaluation", dependencies: ["TensorCore", "SafeTensors", "CPNG", "CLapack", "CZlib", "CCairo"]),
        .target(name: "WeightRounding", dependencies: ["TensorCore", "CLapack"]),
        .target(name: "Quantization", dependencies: ["TensorCore", "SafeTensors", "Diffusion", "WeightRounding"]),
        .target(name: "Correction", dependencies: ["TensorCore", "Diffusion"]),
        .target(name: "Pipeline", dependencies: ["TensorCore", "SafeTensors", "Diffusion", "Evaluation", "Quantization", "Correction"]),
        .target(name: "PTQDCommands", dependencies: [
            "TensorCore", "SafeTensors", "Diffusion", "Evaluation", "Quantization", "Correction", "Pipeline",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        .executableTarget(name: "ptqd", dependencies: ["PTQDCommands"]),

        // MARK: - Tests (run in release: `swift test -c release`, see Makefile)
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore"]),
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors"], exclude: ["Fixtures"]),
        .testTarget(name: "DiffusionTests", dependencies: ["Diffusion", "TensorCore", "SafeTensors"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "EvaluationTests", dependencies: ["Evaluation", "TensorCore", "SafeTensors"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "WeightRoundingTests", dependencies: ["WeightRounding", "TensorCore"]),
        .testTarget(name: "QuantizationTests", dependencies: ["Quantization", "Diffusion", "TensorCore", "SafeTensors"]),
        .testTarget(name: "CorrectionTests", dependencies: ["Correction", "Diffusion", "TensorCore"]),
        .testTarget(name: "PipelineTests", dependencies: ["Pipeline", "Correction", "Quantization", "Diffusion", "TensorCore"]),
        .testTarget(name: "CLITests", dependencies: ["PTQDCommands", "SafeTensors", "TensorCore",
                                                     .product(name: "ArgumentParser", package: "swift-argument-parser")],
                    exclude: ["HelpSnapshots"]),
    ]
)
