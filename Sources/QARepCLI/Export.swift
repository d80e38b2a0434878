import ArgumentParser
import Foundation
import QARep
import QARepONNX

/// `qarep export`: deployable files for other runtimes.
public struct Export: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Export a model: ONNX QDQ (INT8), ONNX FP32 (deployed float), or the native INT8 file.",
        discussion: """
            --from takes an INT8 native file or a QAT checkpoint for onnx and native, an FP32 checkpoint (multi-branch or \
            deployed) for onnx-fp32. A ResNet's INT8 graph (qarep ptq --out) or QAT checkpoint exports as onnx or native.
            """)

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case onnx, onnxFP32 = "onnx-fp32", native
    }

    @Option(help: "Model file: INT8 native, QAT checkpoint, or FP32 checkpoint.") var from: String
    @Option(help: "onnx (INT8 QDQ), onnx-fp32 or native.") var format: Format = .onnx
    @Option(help: "Output file.") var out: String
    @OptionGroup var model: ModelOptions

    public init() {}

    public func run() throws {
        let (family, kind) = try Checkpoint.describe(from)
        let name = (from as NSString).lastPathComponent
        if family != nil || kind == Int8Graph.kind {
            try requireKnownFamily(family, of: from)
            let graph: Int8Graph
            if kind == Int8Graph.kind {
                graph = try Int8Graph.read(from: from)
            } else if kind == GraphQATRun<ResNet>.kind {
                graph = try GraphQATRun<ResNet>.loadModel(from: from).convertToInt8()
            } else {
                throw CommandError("\(name) is an FP32 \(family!) checkpoint; export its INT8 graph (qarep ptq --out) or its QAT checkpoint (qarep qat)")
            }
            switch format {
            case .onnx: try write(ONNXExport.int8(graph))
            case .native: try graph.write(to: out)
            case .onnxFP32: throw CommandError("--format onnx-fp32 exports RepVGG-family FP32 checkpoints; \(name) is an INT8 graph model")
            }
            return writeStandardError("wrote \(out)\n")
        }
        switch format {
        case .onnxFP32:
            guard kind != Int8Model.kind, kind != QATRun.kind else {
                throw CommandError("\(name) is a \(kind!) model; onnx-fp32 exports an FP32 checkpoint")
            }
            let net = try model.load(from)
            try write(ONNXExport.fp32(net))
        case .onnx, .native:
            let int8: Int8Model
            if kind == Int8Model.kind {
                int8 = try Int8Model.read(from: from)
            } else if kind == QATRun.kind {
                int8 = try QATRun.loadModel(from: from).convertToInt8()
            } else {
                throw CommandError("\(name) is an FP32 checkpoint; --format \(format.rawValue) needs an INT8 model (qarep ptq --out) or a QAT checkpoint (qarep qat)")
            }
            if format == .native { try int8.write(to: out) } else { try write(ONNXExport.int8(int8)) }
        }
        writeStandardError("wrote \(out)\n")
    }

    func write(_ data: Data) throws {
        try AtomicFile.write(data, to: out)
    }
}
