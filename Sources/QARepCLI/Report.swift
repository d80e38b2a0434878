import ArgumentParser
import Foundation
import QARep

/// `qarep report`: per-layer evidence for why a checkpoint loses accuracy
/// under quantization (the QARepVGG paper's causes C1 and C2), as an HTML
/// page with charts and as JSON.
public struct ReportCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Per-layer weight and activation ranges, SQNR and sensitivity of a checkpoint under PTQ (HTML and JSON).")

    @Option(help: "FP32 checkpoint (multi-branch or deployed).") var checkpoint: String
    @Option(help: "A second FP32 checkpoint, shown side by side (for example RepVGG beside QARepVGG).") var compare: String?
    @Option(help: "Write report.html (and report.json) into this directory.") var out: String?
    @Option(help: "Layers of lowest SQNR to confirm with a PTQ top-1 each, that layer left in float (default 3).")
    var confirm: Int = 3
    @OptionGroup var quantization: QuantizationOptions
    @OptionGroup var model: ModelOptions
    @OptionGroup var data: DataOptions
    @OptionGroup var runtime: RuntimeOptions

    public init() {}

    public func validate() throws {
        if confirm < 0 { throw ValidationError("--confirm must be >= 0, got \(confirm)") }
        if quantization.weightBits != nil || quantization.activationBits != nil || quantization.firstLastBits != nil {
            throw ValidationError("--weight-bits, --activation-bits and --first-last-bits do not apply to report, which analyses 8 bits and --bits for both")
        }
        if out == nil && !runtime.json { throw ValidationError("--out DIR (for report.html) or --json is needed: the report has to go somewhere") }
    }

    /// What `qarep report --json` prints: the report of `--checkpoint` (its
    /// fields at the top level: `layers`, `fp32_top1`, ...), and the one of
    /// `--compare`, flattened the same way, when given.
    public struct Output: Encodable, Sendable {
        public var checkpoint: String
        public var report: QuantizationReport
        public var compare: Compared?
        /// `report.html`, when `--out` was given.
        public var html: String?

        /// The report of `--compare`.
        public struct Compared: Encodable, Sendable {
            public var checkpoint: String
            public var report: QuantizationReport

            public func encode(to encoder: any Encoder) throws {
                try encodeFlattened(report, checkpoint: checkpoint, to: encoder)
            }
        }

        enum CodingKeys: String, CodingKey { case compare, html }

        public func encode(to encoder: any Encoder) throws {
            try encodeFlattened(report, checkpoint: checkpoint, to: encoder)
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encodeIfPresent(compare, forKey: .compare)
            try container.encodeIfPresent(html, forKey: .html)
        }
    }

    public func execute() throws -> Output {
        runtime.apply()
        let progress = runtime.progress
        let calibration = try data.train(limit: quantization.calibrationImages)
        let test = try data.test()
        func analyse(_ path: String) throws -> QuantizationReport {
            let net = try model.load(path)
            try data.check(test, fits: net.config, model: path)
            progress.finish("analysing \(path): \(net.config.name) \(net.config.block.rawValue), calibration on \(calibration.count) images")
            return try quantizationReport(net, calibration: calibration, test: test, bits: quantization.bitWidth,
                                          qconfig: quantization.qconfig, confirm: confirm)
        }
        let first = try analyse(checkpoint)
        var output = Output(checkpoint: checkpoint, report: first)
        if let compare {
            let second = try analyse(compare)
            guard second.layers.map(\.name) == first.layers.map(\.name) else {
                throw CommandError("\(compare) has layers \(second.layers.map(\.name)), \(checkpoint) has \(first.layers.map(\.name)); "
                                   + "--compare needs the same config")
            }
            output.compare = .init(checkpoint: compare, report: second)
        }
        if let out {
            try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
            var pages = [(name: (checkpoint as NSString).lastPathComponent, report: first)]
            if let c = output.compare { pages.append(((c.checkpoint as NSString).lastPathComponent, c.report)) }
            let html = (out as NSString).appendingPathComponent("report.html")
            try AtomicFile.write(Data(ReportPage.html(pages).utf8), to: html)
            output.html = html
            try AtomicFile.write(Data(try jsonString(output).utf8), to: (out as NSString).appendingPathComponent("report.json"))
        }
        return output
    }

    public func run() throws {
        let output = try execute()
        if runtime.json { return try printJSON(output) }
        for (name, r) in [(output.checkpoint, output.report)] + (output.compare.map { [($0.checkpoint, $0.report)] } ?? []) {
            print("\(name): \(r.config) \(r.block), FP32 top-1 \(percent(r.fp32Top1)), "
                  + r.bitWidths.map { "PTQ W\($0)A\($0) \(percent(r.ptqTop1["\($0)"]!))" }.joined(separator: ", "))
            print("layer        max|w|/std  weight SQNR  act. max  act. SQNR  (8 bits)")
            for l in r.layers {
                print(pad(l.name, 13) + pad(String(format: "%.1f", l.weightMaxOverStd), 12) + pad(String(format: "%.1f dB", l.weightSqnrDb), 13)
                      + pad(String(format: "%.3g", l.activationMax), 10) + String(format: "%.1f dB", l.activationSqnrDb))
            }
            for s in r.sensitivity {
                print("  \(s.layer) in float: PTQ W\(r.sensitivityBits)A\(r.sensitivityBits) top-1 \(percent(s.floatTop1)) "
                      + String(format: "(%+.2f pp)", 100 * s.gain))
            }
        }
        if let html = output.html { print("report: \(html)") }
    }
}

/// `report`'s fields and `checkpoint` as one JSON object.
private func encodeFlattened(_ report: QuantizationReport, checkpoint: String, to encoder: any Encoder) throws {
    enum Key: String, CodingKey { case checkpoint }
    try report.encode(to: encoder)
    var container = encoder.container(keyedBy: Key.self)
    try container.encode(checkpoint, forKey: .checkpoint)
}
