// Fuzz targets for QARep's file readers. Built normally, `qarep-fuzz` replays
// files through a reader (a corpus, or a crash libFuzzer found) and writes the
// seed corpus; built with libFuzzer (scripts/fuzz, `-sanitize=fuzzer` and
// `-D QAREP_LIBFUZZER`) it is the fuzzer itself, the target chosen by the
// environment variable QAREP_FUZZ_TARGET.
//
// Every input must end in a value or a thrown error: a trap, a crash or a
// sanitizer report is a bug.

import Foundation
import QARep

/// The readers under test.
enum FuzzTarget: String, CaseIterable {
    /// `SafeTensorsFile(parsing:)`: header JSON, offsets, dtypes.
    case safetensors
    /// `FashionMNIST.load`: IDX image and label files, plain or gzipped (the
    /// input is written as both files: one parse as 3-D images, one as 1-D labels).
    case idx
    /// `Int8Model.read`: the native INT8 file's layout, shapes and scales.
    case int8
    /// `QATRun.loadModel`: a QAT checkpoint's state, tensors and observers.
    case qat
    /// `CIFAR10.load`: a binary-version batch file (label + 3x32x32 records).
    case cifar10
    /// `Int8Graph.read`: the native INT8 graph file's node list, tensors and
    /// invariants; a graph it accepts is also run, on one zero image when that is small.
    case int8graph

    /// Runs one input; errors are the expected outcome for most inputs.
    /// Returns whether the reader accepted it.
    @discardableResult
    func run(_ bytes: [UInt8]) -> Bool {
        switch self {
        case .safetensors:
            return (try? SafeTensorsFile(parsing: bytes, source: "fuzz")) != nil
        case .idx:
            let dir = FuzzTarget.scratch
            for name in ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"] {
                _ = FileManager.default.createFile(atPath: dir + "/" + name, contents: Data(bytes))
            }
            let images = (try? IDX.readImages(at: dir + "/train-images-idx3-ubyte")) != nil
            let labels = (try? IDX.readLabels(at: dir + "/train-labels-idx1-ubyte")) != nil
            _ = try? FashionMNIST.load(split: .train, root: dir)
            return images || labels
        case .int8:
            guard let file = try? SafeTensorsFile(parsing: bytes, source: "fuzz") else { return false }
            return (try? Int8Model.read(file, name: "fuzz")) != nil
        case .qat:
            guard let file = try? SafeTensorsFile(parsing: bytes, source: "fuzz") else { return false }
            return (try? QATRun.loadModel(file, name: "fuzz")) != nil
        case .cifar10:
            let dir = FuzzTarget.scratch
            _ = FileManager.default.createFile(atPath: dir + "/" + CIFAR10.testFile, contents: Data(bytes))
            return (try? CIFAR10.load(split: .test, root: dir)) != nil
        case .int8graph:
            guard let file = try? SafeTensorsFile(parsing: bytes, source: "fuzz"),
                  let graph = try? Int8Graph.read(file, name: "fuzz"), let engine = try? Int8GraphEngine(graph, threads: 1) else {
                return false
            }
            let image = Array(graph.inputShape.dropFirst())
            if image.reduce(1, *) <= 1 << 16 { _ = engine(Tensor([Float](repeating: 0, count: image.reduce(1, *)), shape: [1] + image)) }
            return true
        }
    }

    /// One scratch directory per process, in memory when /dev/shm exists,
    /// removed when the process exits.
    static let scratch: String = {
        let dir = scratchPath()
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: FuzzTarget.scratchPath()) }
        return dir
    }()

    private static func scratchPath() -> String {
        let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        return base + "/qarep-fuzz-\(getpid())"
    }

}

#if QAREP_LIBFUZZER
private let selected: FuzzTarget = {
    guard let name = ProcessInfo.processInfo.environment["QAREP_FUZZ_TARGET"], let t = FuzzTarget(rawValue: name) else {
        FileHandle.standardError.write(Data("set QAREP_FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue))\n".utf8))
        exit(2)
    }
    return t
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    selected.run(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}

// SwiftPM links an executable's entry point as `<module>_main` and defines
// `main` as that symbol, so libFuzzer's own `main` is not linked in; this one
// hands over to libFuzzer's driver, exactly as its `main` would.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@_cdecl("qarep_fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>) -> CInt {
    var count = argc, arguments = argv
    return LLVMFuzzerRunDriver(&count, &arguments, fuzzOneInput)
}
#else
@main
struct Replay {
    static func main() throws {
        let args = Array(CommandLine.arguments.dropFirst())
        if args.first == "seeds", args.count == 2 {
            try SeedCorpus.write(to: args[1])
            return
        }
        guard let name = args.first, let target = FuzzTarget(rawValue: name), args.count > 1 else {
            FileHandle.standardError.write(Data("""
                usage: qarep-fuzz TARGET FILE|DIR...   replay inputs through a reader (\(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))
                       qarep-fuzz seeds DIR             write the seed corpus (DIR/TARGET/...)

                """.utf8))
            exit(2)
        }
        var count = 0, accepted = 0
        for path in args.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                FileHandle.standardError.write(Data("qarep-fuzz: \(path): no such file\n".utf8))
                exit(1)
            }
            let files = isDirectory.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { path + "/" + $0 } : [path]
            for file in files {
                if target.run(Array(try Data(contentsOf: URL(fileURLWithPath: file)))) { accepted += 1 }
                count += 1
            }
        }
        print("\(target.rawValue): \(count) inputs, \(accepted) accepted, \(count - accepted) refused, none crashed")
    }
}
#endif
