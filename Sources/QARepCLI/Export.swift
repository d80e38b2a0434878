import ArgumentParser
import Foundation
import QARep
import QARepONNX

/// `qarep export`: deployable files for other runtimes.
public struct Export: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Export a model: ONNX QDQ (INT8), ONNX FP32 (deployed float), or the native INT8 file.",
        discussion: "--from takes an INT8 native file or a QAT checkpoint for onnx and native, an FP32 checkpoint (multi-branch or deployed) for onnx-fp32.")

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case onnx, onnxFP32 = "onnx-fp32", native
    }

    @Option(help: "Model file: INT8 native, QAT checkpoint, or FP32 checkpoint.") var from: String
    @Option(help: "onnx (INT8 QDQ), onnx-fp32 or native.") var format: Format = .onnx
    @Option(help: "Output file.") var out: String
    @OptionGroup var model: ModelOptions

    public init() {}

    public func run() throws {
        let kind = try SafeTensorsFile.read(from: from).metadata["kind"]
        let name = (from as NSString).lastPathComponent
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
