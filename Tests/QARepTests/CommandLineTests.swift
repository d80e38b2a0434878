import ArgumentParser
import Foundation
import QARep
import QARepCLI
import QARepKernels
import Testing

/// A data root holding synthetic-band IDX files (512 training, 200 test
/// images), so the commands run end to end without the real dataset.
func syntheticDataRoot() throws -> String {
    let dir = temporaryDirectory("cli-data")
    func bigEndian(_ values: [UInt32]) -> [UInt8] {
        values.flatMap { v in [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)] }
    }
    for (prefix, data) in [("train", syntheticBands(count: 512, seed: 31)), ("t10k", syntheticBands(count: 200, seed: 32))] {
        try Data(bigEndian([0x0803, UInt32(data.count), 28, 28]) + data.images)
            .write(to: URL(fileURLWithPath: dir + "/\(prefix)-images-idx3-ubyte"))
        try Data(bigEndian([0x0801, UInt32(data.count)]) + data.labels)
            .write(to: URL(fileURLWithPath: dir + "/\(prefix)-labels-idx1-ubyte"))
    }
    return dir
}

/// Parses `arguments` as `C` (validation included) and runs it in-process.
private func execute<C: ParsableCommand>(_: C.Type, _ arguments: [String], _ body: (C) throws -> Void) throws {
    try body(try C.parse(arguments + ["--quiet"]))
}

@Suite("Command line: the qarep commands run in-process", .serialized)
struct CommandLineTests {
    @Test("ptq --percentile reaches the observers: 90 clips activations tighter than 99.99")
    func percentileFlag() throws {
        let data = try syntheticDataRoot(), out = temporaryDirectory("cli-ptq")
        defer { try? FileManager.default.removeItem(atPath: data); try? FileManager.default.removeItem(atPath: out) }
        var scales: [Double: [Float]] = [:]
        for p in [90.0, 99.99] {
            let file = out + "/p\(p).safetensors"
            let report = try PTQ.parse(["--checkpoint", shippedCheckpoints + "/tiny-qarepvgg.safetensors", "--calibrator", "percentile",
                                        "--percentile", "\(p)", "--calib-images", "128", "--data-root", data, "--out", file, "--quiet"]).execute()
            #expect(report.percentile == p && report.calibrator == "percentile")
            #expect(report.engineAgreement ?? 0 >= 0.99)
            scales[p] = try Int8Model.read(from: file).convs.map(\.inputScale)
        }
        let tighter = zip(scales[90]!, scales[99.99]!).dropFirst().filter { $0 < $1 }.count
        #expect(tighter == scales[90]!.count - 1, "input scales at 90: \(scales[90]!), at 99.99: \(scales[99.99]!)")
    }

    @Test("ptq --weight-bits and --activation-bits set the two widths apart, as QConfig does in the library; the engine runs them")
    func separateBitWidths() throws {
        let data = try syntheticDataRoot()
        defer { try? FileManager.default.removeItem(atPath: data) }
        let checkpoint = shippedCheckpoints + "/tiny-qarepvgg.safetensors"
        let out = temporaryDirectory() + "-w8a4.safetensors"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let report = try PTQ.parse(["--checkpoint", checkpoint, "--weight-bits", "8", "--activation-bits", "4", "--out", out,
                                    "--calib-images", "64", "--data-root", data, "--quiet"]).execute()
        #expect(report.weightBits == 8 && report.activationBits == 4 && report.bits == 8)
        // The integer engine runs W8A4 (4-bit codes in bytes), and the file it writes says so.
        let engineTop1 = try #require(report.int8Top1)
        #expect(try #require(report.engineAgreement) >= 0.99)
        #expect(try Int8Model.read(from: out).activation.bits == 4)
        let reread = try Eval.parse(["--int8", out, "--data-root", data, "--quiet"]).execute()
        #expect(reread.int8Top1 == engineTop1)
        var qconfig = QConfig.tensorRT
        qconfig.activation.bits = 4
        let calibration = try FashionMNIST.load(split: .train, root: data, limit: 64)
        let quantized = try postTrainingQuantize(try Checkpoint.loadModel(checkpoint), calibration: calibration, qconfig: qconfig)
        #expect(report.fakeQuantTop1 == evaluate(quantized, on: try FashionMNIST.load(split: .test, root: data)).top1)
    }

    @Test("ptq --bits 4 --first-last-bits 8 keeps the first convolution and the classifier at 8 bits; the file and the report say so")
    func firstLastBitsFlag() throws {
        let data = try syntheticDataRoot()
        defer { try? FileManager.default.removeItem(atPath: data) }
        let out = temporaryDirectory() + "-edges.safetensors"
        defer { try? FileManager.default.removeItem(atPath: out) }
        let report = try PTQ.parse(["--checkpoint", shippedCheckpoints + "/tiny-qarepvgg.safetensors", "--bits", "4",
                                    "--first-last-bits", "8", "--out", out, "--calib-images", "64", "--data-root", data, "--quiet"]).execute()
        #expect(report.firstLastBits == 8 && report.weightBits == 4 && report.activationBits == 4)
        #expect(try #require(report.engineAgreement) >= 0.99)
        let int8 = try Int8Model.read(from: out)
        #expect(int8.convs[0].weightBits == 8 && int8.convs[0].inputBits == 8 && int8.convs[1].weightBits == 4)
        #expect(int8.head.weightBits == 8 && int8.head.inputBits == 8 && int8.convs.last?.outputBits == 8)
    }

    @Test("ptq --bias-correction corrects every layer (tiny: 7 blocks and the head) and its report says by how much")
    func biasCorrectionFlag() throws {
        let data = try syntheticDataRoot()
        defer { try? FileManager.default.removeItem(atPath: data) }
        let report = try PTQ.parse(["--checkpoint", shippedCheckpoints + "/tiny-qarepvgg.safetensors", "--weight-bits", "4",
                                    "--bias-correction", "--calib-images", "64", "--data-root", data, "--quiet"]).execute()
        let corrections = try #require(report.biasCorrections)
        #expect(corrections.count == 8 && corrections.allSatisfy { $0.isFinite } && corrections.contains { $0 > 0 }, "\(corrections)")
    }

    @Test("impossible flags are refused before any work, with a message naming the flag", arguments: [
        (["ptq", "--checkpoint", "x", "--calibrator", "percentile", "--percentile", "0"], "--percentile"),
        (["ptq", "--checkpoint", "x", "--percentile", "90"], "--percentile"),
        (["ptq", "--checkpoint", "x", "--calibrator", "median"], "--calibrator"),
        (["ptq", "--checkpoint", "x", "--bits", "9"], "--bits"),
        (["ptq", "--checkpoint", "x", "--weight-bits", "1"], "--weight-bits"),
        (["qat", "--from", "x", "--activation-bits", "9"], "--activation-bits"),
        (["report", "--checkpoint", "x", "--weight-bits", "4", "--json"], "--weight-bits"),
        (["report", "--checkpoint", "x"], "--out"),
        (["ptq", "--checkpoint", "x", "--adaround-iterations", "10"], "--adaround"),
        (["ptq", "--checkpoint", "x", "--adaround", "--adaround-iterations", "0"], "--adaround-iterations"),
        (["qat", "--from", "x", "--distill-weight", "0.5"], "--distill"),
        (["qat", "--from", "x", "--distill", "--distill-weight", "2"], "--distill-weight"),
        (["qat", "--from", "x", "--distill", "--distill-temperature", "0"], "--distill-temperature"),
        (["bench", "--batch", "0"], "--batch"),
        (["bench", "--models", "b0"], "--models"),
        (["train", "--config", "b0"], "--config"),
        (["train", "--epochs", "0"], "--epochs"),
        (["train", "--lr", "nan"], "--lr"),
        (["train", "--momentum", "1"], "--momentum"),
        (["train", "--batch-size", "1"], "--batch-size"),
        (["train", "--epochs", "2", "--warmup-epochs", "3"], "--warmup-epochs"),
        (["train", "--weight-decay", "custom-l2", "--block", "qarepvgg"], "--weight-decay"),
        (["train", "--label-smoothing", "1"], "--label-smoothing"),
        (["train", "--model", "resnet21"], "6n + 2"),
        (["train", "--model", "resnet20", "--config", "tiny"], "--config"),
        (["qat", "--resume", "d", "--epochs", "3"], "--epochs"),
        (["qat", "--from", "a", "--freeze-bn-after", "-1"], "--freeze-bn-after"),
        (["eval", "--int8", "m", "--deploy"], "--deploy"),
        (["quickstart", "--epochs", "0"], "--epochs"),
    ])
    func refusedFlags(_ arguments: [String], _ flag: String) {
        #expect {
            _ = try QARepCommand.parseAsRoot(arguments)
        } throws: { error in
            QARepCommand.message(for: error).contains(flag)
        }
    }

    @Test("train, eval --deploy, ptq, qat, eval --int8 and export chain through their files")
    func pipeline() throws {
        let data = try syntheticDataRoot(), dir = temporaryDirectory("cli-run")
        defer { try? FileManager.default.removeItem(atPath: data); try? FileManager.default.removeItem(atPath: dir) }
        // No --threads: the kernels' thread count is process-wide, and other suites run beside this one.
        let common = ["--data-root", data, "--quiet"]

        let train = try Train.parse(["--config", "tiny", "--epochs", "2", "--batch-size", "32", "--val-split", "64",
                                     "--out", dir + "/fp32"] + common).execute()
        #expect(train.epochs == 2 && train.steps == 2 * (448 / 32))
        #expect(train.summaries.allSatisfy { $0.validation?.count == 64 && $0.test?.count == 200 })
        #expect(train.summaries.count == 2 && train.summaries[1].trainLoss < train.summaries[0].trainLoss, "training loss falls")
        #expect((train.top1 ?? 0) > 0.5, "synthetic bands are learnable: top-1 \(train.top1 ?? 0)")
        let last = try #require(train.checkpoint)
        #expect(FileManager.default.fileExists(atPath: dir + "/fp32/best.safetensors"))
        // The same directory again is refused: it already holds a run.
        #expect(throws: (any Error).self) { _ = try Train.parse(["--out", dir + "/fp32"] + common) }

        let eval = try Eval.parse(["--checkpoint", last, "--deploy"] + common).execute()
        #expect(eval.top1 == train.top1 && eval.form == "multi-branch")
        #expect(eval.deployedAgreement ?? 0 >= 0.99)

        let ptq = try PTQ.parse(["--checkpoint", last, "--calib-images", "64", "--out", dir + "/ptq.safetensors"] + common).execute()
        #expect(ptq.top1 == train.top1 && ptq.engineAgreement ?? 0 >= 0.99)

        let qat = try QAT.parse(["--from", last, "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "32", "--nesterov", "--val-split", "64",
                                 "--label-smoothing", "0.1", "--calib-images", "64", "--out", dir + "/qat"] + common).execute()
        #expect(qat.top1 == train.top1 && qat.epochs == 1)
        #expect(qat.engineAgreement ?? 0 >= 0.99, "engine agreement \(qat.engineAgreement ?? 0)")
        for file in ["last", "best", "int8"] {
            #expect(FileManager.default.fileExists(atPath: dir + "/qat/\(file).safetensors"), "qat wrote \(file).safetensors")
        }
        let int8 = try Eval.parse(["--int8", try #require(qat.int8Model)] + common).execute()
        #expect(int8.int8Top1 == qat.int8Top1 && int8.form == "int8")
        // Rep-aware QAT: every branch trained; its checkpoint exports like any other, and resume keeps the form.
        let repAware = try QAT.parse(["--from", last, "--form", "multi-branch", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "32",
                                      "--val-split", "64", "--calib-images", "64", "--out", dir + "/qat-mb"] + common).execute()
        #expect(repAware.epochs == 1 && repAware.engineAgreement ?? 0 >= 0.99, "engine agreement \(repAware.engineAgreement ?? 0)")
        #expect { _ = try QAT.parse(["--resume", dir + "/qat-mb", "--form", "post-bn"] + common).execute() } throws: { "\($0)".contains("--form") }
        try Export.parse(["--from", dir + "/qat-mb/last.safetensors", "--format", "onnx", "--out", dir + "/qat-mb.onnx"]).run()
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/qat-mb.onnx")).count > 1000)

        try Export.parse(["--from", dir + "/qat/last.safetensors", "--format", "onnx", "--out", dir + "/qat.onnx"]).run()
        let onnx = try Data(contentsOf: URL(fileURLWithPath: dir + "/qat.onnx"))
        #expect(onnx.count > 1000)
        #expect(throws: (any Error).self) {
            try Export.parse(["--from", last, "--format", "native", "--out", dir + "/x.safetensors"]).run()
        }
    }
    @Test("a ResNet on the command line: train --model, train --resume, eval, ptq --out, eval --int8, qat, export, as for RepVGG")
    func resnetPipeline() throws {
        let data = try syntheticDataRoot(), dir = temporaryDirectory("cli-resnet")
        defer { try? FileManager.default.removeItem(atPath: data); try? FileManager.default.removeItem(atPath: dir) }
        let common = ["--data-root", data, "--quiet"]
        let first = try Train.parse(["--model", "resnet8", "--epochs", "1", "--batch-size", "32", "--lr", "0.05", "--val-split", "64",
                                     "--out", dir + "/fp32"] + common).execute()
        #expect(first.epochs == 1 && first.steps == 448 / 32)
        // The run knows it is a ResNet: a RepVGG flag on resume is refused, no flag at all continues it.
        #expect { _ = try Train.parse(["--resume", dir + "/fp32", "--block", "repvgg", "--epochs", "2", "--quiet"]).execute() }
            throws: { "\($0)".contains("--block") }
        let train = try Train.parse(["--resume", dir + "/fp32", "--epochs", "2", "--quiet"]).execute()
        #expect(train.epochs == 2 && train.summaries.count == 1)
        #expect(train.summaries[0].trainLoss < first.summaries[0].trainLoss, "training loss falls")
        // Bands are a matter of position, which global average pooling after two downsamplings
        // mostly hides: ResNet-8 learns them slowly, but well above chance (0.1).
        #expect((train.top1 ?? 0) > 0.2, "top-1 \(train.top1 ?? 0)")
        let last = try #require(train.checkpoint)

        let eval = try Eval.parse(["--checkpoint", last] + common).execute()
        #expect(eval.top1 == train.top1 && eval.form == "fp32" && eval.config == "resnet8")

        let ptq = try PTQ.parse(["--checkpoint", last, "--calib-images", "64", "--out", dir + "/ptq.safetensors"] + common).execute()
        #expect(ptq.top1 == train.top1 && ptq.engineAgreement ?? 0 >= 0.99, "engine agreement \(ptq.engineAgreement ?? 0)")
        let ptqEngine = try Eval.parse(["--int8", dir + "/ptq.safetensors"] + common).execute()
        #expect(ptqEngine.int8Top1 == ptq.int8Top1 && ptqEngine.form == "int8")
        #expect { _ = try PTQ.parse(["--checkpoint", last, "--cle"] + common).execute() } throws: { "\($0)".contains("--cle") }
        #expect { _ = try PTQ.parse(["--checkpoint", last, "--first-last-bits", "8"] + common).execute() }
            throws: { "\($0)".contains("--first-last-bits") }
        // AdaRound works on any captured model: one report per convolution and linear layer (resnet8: 9 and 1).
        let rounded = try PTQ.parse(["--checkpoint", last, "--calib-images", "64", "--weight-bits", "4", "--adaround",
                                     "--adaround-iterations", "20"] + common).execute()
        #expect(rounded.adaRound?.count == 10 && rounded.engineAgreement ?? 0 >= 0.99)

        // Graph QAT distilled from the FP32 checkpoint (the teacher is a ResNet too).
        let qat = try QAT.parse(["--from", last, "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "32", "--val-split", "64",
                                 "--calib-images", "64", "--distill", "--out", dir + "/qat"] + common).execute()
        #expect(qat.top1 == train.top1 && qat.epochs == 1)
        // Resuming with other distillation settings is refused, naming the flag.
        #expect { _ = try QAT.parse(["--resume", dir + "/qat", "--distill", "--distill-weight", "0.9"] + common).execute() }
            throws: { "\($0)".contains("--distill") }
        #expect(qat.engineAgreement ?? 0 >= 0.99, "engine agreement \(qat.engineAgreement ?? 0)")
        let qatEngine = try Eval.parse(["--int8", try #require(qat.int8Model)] + common).execute()
        #expect(qatEngine.int8Top1 == qat.int8Top1)
        #expect { _ = try QAT.parse(["--from", last, "--form", "multi-branch", "--epochs", "1", "--warmup-epochs", "0", "--calib-images", "64",
                                     "--out", dir + "/qat-mb"] + common).execute() } throws: { "\($0)".contains("multi-branch form applies to RepVGG") }
        #expect { _ = try QAT.parse(["--from", last, "--add-post-bn", "--epochs", "1", "--warmup-epochs", "0", "--calib-images", "64",
                                     "--out", dir + "/qat-bn"] + common).execute() } throws: { "\($0)".contains("--add-post-bn works on RepVGG") }

        for (from, name) in [(dir + "/qat/last.safetensors", "qat"), (dir + "/ptq.safetensors", "ptq")] {
            try Export.parse(["--from", from, "--format", "onnx", "--out", dir + "/\(name).onnx"]).run()
            #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/\(name).onnx")).count > 1000)
        }
        #expect { try Export.parse(["--from", last, "--format", "onnx", "--out", dir + "/x.onnx"]).run() }
            throws: { "\($0)".contains("FP32 resnet checkpoint") }
        // RepVGG-only commands say so.
        #expect { _ = try ReportCommand.parse(["--checkpoint", last, "--out", dir + "/report"] + common).execute() }
            throws: { "\($0)".contains("holds a resnet model") }
    }
}

@Suite("Command line: resume without repeating flags, stop on a signal", .serialized)
struct CommandLineResumeTests {
    @Test("train --resume restores data root, limits and threads; a contradicting flag is refused")
    func resumeRemembersTheRun() throws {
        let data = try syntheticDataRoot(), dir = temporaryDirectory("cli-resume")
        defer { try? FileManager.default.removeItem(atPath: data); try? FileManager.default.removeItem(atPath: dir) }
        let flags = ["--config", "tiny", "--batch-size", "32", "--lr", "0.05", "--data-root", data,
                     "--train-limit", "320", "--test-limit", "60", "--quiet"]
        _ = try Train.parse(flags + ["--epochs", "1", "--out", dir + "/a"]).execute()
        _ = try Train.parse(flags + ["--epochs", "1", "--out", dir + "/b"]).execute()

        // Any flag that defines the run and differs from it is refused, naming it.
        for (extra, flag) in [(["--train-limit", "100"], "--train-limit"), (["--lr", "0.1"], "--lr"), (["--threads", "\(KernelThreads.count + 1)"], "--threads"),
                              (["--data-root", dir], "--data-root"), (["--seed", "3"], "--seed"), (["--val-split", "10"], "--val-split"), (["--block", "repvgg"], "--block")] {
            #expect {
                _ = try Train.parse(["--resume", dir + "/b", "--quiet"] + extra).execute()
            } throws: { error in "\(error)".contains(flag) && "\(error)".contains("other settings") }
        }
        // Extending both by one epoch: with every flag repeated, and with none (the run's own
        // data root, limits and threads restored) give the same bits. Without the limits the
        // second would train on all 512 images, with other threads other sums.
        let repeated = try Train.parse(flags + ["--resume", dir + "/a", "--epochs", "2"]).execute()
        let bare = try Train.parse(["--resume", dir + "/b", "--epochs", "2", "--quiet"]).execute()
        // The default validation split of a 320-image run is its last 32 images.
        #expect(bare.steps == repeated.steps && bare.steps == 2 * (288 / 32) && bare.top1 == repeated.top1)
        let a = try SafeTensorsFile.read(from: dir + "/a/last.safetensors"), b = try SafeTensorsFile.read(from: dir + "/b/last.safetensors")
        #expect(a.tensors == b.tensors, "a run resumed without its data flags continues bit for bit")
    }

    /// The `qarep` executable built beside this test bundle.
    static let binary: String? = {
        let dir = (CommandLine.arguments[0] as NSString).deletingLastPathComponent
        for candidate in [dir + "/qarep", (dir as NSString).deletingLastPathComponent + "/qarep"]
            where FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        return nil
    }()

    @Test("SIGTERM stops qarep train after a step with a checkpoint and says how to resume; the resume finishes the run",
          .enabled(if: binary != nil))
    func signalStop() throws {
        let data = try syntheticDataRoot(), dir = temporaryDirectory("cli-signal")
        defer { try? FileManager.default.removeItem(atPath: data); try? FileManager.default.removeItem(atPath: dir) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary!)
        // The default thread count, the test process's own: resuming in-process restores the run's
        // count, and kernels' thread count is process-wide (other suites run beside this one).
        process.arguments = ["train", "--epochs", "50", "--batch-size", "16", "--val-split", "0", "--data-root", data,
                             "--out", dir + "/run", "--quiet"]
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Wait for the first epoch's checkpoint, then ask it to stop.
        let deadline = Date().addingTimeInterval(120)
        while !FileManager.default.fileExists(atPath: dir + "/run/last.safetensors") && Date() < deadline && process.isRunning {
            Thread.sleep(forTimeInterval: 0.05)
        }
        process.terminate()  // SIGTERM
        process.waitUntilExit()
        let message = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationStatus == 130, "exit status \(process.terminationStatus): \(message)")
        #expect(message.contains("qarep train --resume \(dir)/run"), "\(message)")
        let state = try #require(try Checkpoint.read(dir + "/run/last.safetensors").training)
        #expect(state.step >= 32 && state.epoch < 50, "stopped at step \(state.step)")

        let resumed = try Train.parse(["--resume", dir + "/run", "--epochs", "\(state.epoch + 1)", "--quiet"]).execute()
        #expect(resumed.epochs == state.epoch + 1 && resumed.steps == (state.epoch + 1) * 32)
    }
}

/// Every numeric option of every subcommand, with values it must refuse
/// (zero, negative, NaN, out of range) before any work starts.
private let numericOptions: [(command: [String], flag: String, bad: [String])] = {
    let limits: [(String, [String])] = [("--train-limit", ["0", "-5"]), ("--test-limit", ["0", "-1"]), ("--threads", ["0", "-2", "nan"])]
    let training: [(String, [String])] = [
        ("--epochs", ["0", "-1"]), ("--lr", ["0", "-0.1", "nan", "inf"]), ("--warmup-epochs", ["-1", "11"]),
        ("--batch-size", ["0", "1", "-64"]), ("--momentum", ["-0.1", "1", "nan"]), ("--wd", ["-1e-4", "nan", "inf"]),
        ("--label-smoothing", ["-0.1", "1", "nan"]), ("--seed", ["-1"]), ("--checkpoint-every", ["0", "-10"]),
        ("--val-split", ["-1"]),
    ]
    let quantization: [(String, [String])] = [("--calib-images", ["0", "-1"]), ("--bits", ["1", "9", "0"]), ("--first-last-bits", ["1", "9"]),
                                              ("--percentile", ["0", "-1", "100.5", "nan"])]
    var cases: [([String], String, [String])] = []
    func add(_ command: [String], _ options: [(String, [String])]) {
        for (flag, bad) in options { cases.append((command, flag, bad)) }
    }
    add(["train"], training + limits)
    add(["qat", "--from", "x"], training.filter { $0.0 != "--epochs" && $0.0 != "--warmup-epochs" } + quantization + limits
        + [("--freeze-bn-after", ["-1"]), ("--freeze-observers-after", ["-1"]), ("--epochs", ["0"]), ("--warmup-epochs", ["-1"]),
           ("--form", ["bogus", "PostBN"])])
    add(["ptq", "--checkpoint", "x"], quantization + limits)
    add(["eval", "--checkpoint", "x"], limits)
    add(["bench"], [("--batch", ["0", "-1"]), ("--repeats", ["0"]), ("--train-steps", ["0"]), ("--threads", ["0"])])
    add(["quickstart"], [("--epochs", ["0"]), ("--qat-epochs", ["0"]), ("--qat-images", ["0", "-1"])] + limits)
    return cases
}()

@Suite("Command line: numeric options")
struct CommandLineOptionTests {
    @Test("every numeric option refuses zero, negative, NaN and out-of-range values, naming the flag",
          arguments: numericOptions.indices)
    func refused(_ index: Int) {
        let (command, flag, bad) = numericOptions[index]
        // --percentile is only valid with the percentile calibrator; give it, so the range is what fails.
        let extra = flag == "--percentile" ? ["--calibrator", "percentile"] : []
        for value in bad {
            #expect {
                _ = try QARepCommand.parseAsRoot(command + extra + ["\(flag)=\(value)"])
            } throws: { error in
                QARepCommand.message(for: error).contains(flag)
            }
        }
    }
}
