// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "QARep",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "QARep", targets: ["QARep"]),
        .library(name: "QARepONNX", targets: ["QARepONNX"]),
        .executable(name: "qarep", targets: ["qarep"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-protobuf", from: "1.28.0"),
    ],
    targets: [
        // MARK: Public API
        .target(name: "QARep", dependencies: ["QARepKernels", "CZlib"]),
        .target(
            name: "QARepONNX",
            dependencies: ["QARep", .product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["Generated/onnx.proto"]),
        // TensorBoard event files (scalars), over Swift generated from a subset of TensorFlow's event.proto.
        .target(
            name: "QARepTensorBoard",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            exclude: ["Generated/event.proto"]),
        // The command line: a library, so tests run its commands in-process; `qarep` only calls it.
        .target(
            name: "QARepCLI",
            dependencies: ["QARep", "QARepONNX", "QARepKernels", "QARepTensorBoard",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .executableTarget(name: "qarep", dependencies: ["QARepCLI"]),

        // MARK: Implementation details
        // Hot loops (im2col, GEMM calls, reductions) live apart from the model code.
        .target(name: "QARepKernels", dependencies: ["COpenBLAS", "CQARepInt8", "CQARepFloat", "CQARepRuns"]),
        // AVX2 int16 GEMM for the INT8 engine (vpmaddwd, which Swift SIMD does not emit).
        .target(name: "CQARepInt8", dependencies: ["CQARepRuns"], linkerSettings: [.linkedLibrary("m")]),
        // Float implicit-GEMM convolution, AVX-512 or AVX2 + FMA chosen at run time.
        .target(name: "CQARepFloat", dependencies: ["CQARepRuns"], linkerSettings: [.linkedLibrary("m")]),
        // The border runs both convolution libraries take (pixels that read part of each window).
        .target(name: "CQARepRuns"),
        .systemLibrary(name: "COpenBLAS", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", providers: [.apt(["zlib1g-dev"])]),

        // Fuzz targets of the file readers: a corpus replayer when built normally,
        // the libFuzzer binary when built by scripts/fuzz.
        .executableTarget(name: "qarep-fuzz", dependencies: ["QARep"]),

        // MARK: Recipes
        .executableTarget(name: "train-fashion-mnist", dependencies: ["QARep"], path: "recipes/train-fashion-mnist"),
        .executableTarget(name: "paper-ablation", dependencies: ["QARep", "QARepKernels"], path: "recipes/paper-ablation"),
        .executableTarget(name: "custom-model-qat", dependencies: ["QARep", "QARepONNX"], path: "recipes/custom-model-qat"),

        // MARK: Tests
        .testTarget(name: "QARepTests", dependencies: ["QARep", "QARepKernels", "QARepONNX", "QARepCLI", "QARepTensorBoard", "CZlib"],
                    resources: [.copy("Fixtures")]),
    ]
)
