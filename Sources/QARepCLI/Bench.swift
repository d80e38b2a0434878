import ArgumentParser
import Foundation
import QARep
import QARepKernels

/// `qarep bench`: convolution GFLOP/s beside sgemm on the same GEMM shapes,
/// and training throughput, measured side by side in one run.
public struct Bench: ParsableCommand {
    public static let configuration = CommandConfiguration(
        abstract: "Measure convolution and training throughput against OpenBLAS sgemm.")

    @Option(help: "Batch size of the convolution shapes.") var batch = 128
    @Option(help: "Timed repetitions per measurement (the median is reported).") var repeats = 5
    @Option(help: "Training steps timed for images/s.") var trainSteps = 5
    @Option(parsing: .upToNextOption, help: "Models for the training and inference measurements (\(ConfigName.allValueStrings.joined(separator: ", "))).")
    var models: [ConfigName] = [.tiny, .a0Half]
    @Flag(help: "Skip the per-layer convolution table (training and inference only).") var skipLayers = false
    @Option(help: "Worker threads of QARep's kernels.") var threads = KernelThreads.count
    @Flag(help: "Print one JSON object on stdout instead of tables.") var json = false

    public init() {}

    public func validate() throws {
        for (flag, value) in [("--batch", batch), ("--repeats", repeats), ("--train-steps", trainSteps), ("--threads", threads)]
            where value < 1 {
            throw ValidationError("\(flag) must be at least 1, got \(value)")
        }
        if models.isEmpty { throw ValidationError("--models needs at least one of \(ConfigName.allValueStrings.joined(separator: ", "))") }
    }

    public func run() throws {
        KernelThreads.count = threads
        var rows: [[String: Double]] = []
        var names: [String] = []
        if !json && !skipLayers {
            print("conv shapes of a0 at 28x28 input, batch \(batch) (GFLOP/s, median of \(repeats))")
            print(pad("layer", 26) + pad("fwd", 8) + pad("sgemm", 8) + pad("ratio", 7) + pad("fwd+bwd", 9) + pad("3xsgemm", 9) + pad("ratio", 7))
        }
        for shape in skipLayers ? [] : a0ConvShapes {
            let r = measureConv(shape)
            rows.append(r); names.append(shape.name)
            if !json {
                print(pad(shape.name, 26) + pad(f1(r["fwd"]!), 8) + pad(f1(r["sgemm"]!), 8) + pad(pct(r["fwd"]! / r["sgemm"]!), 7)
                      + pad(f1(r["fwdbwd"]!), 9) + pad(f1(r["sgemm3"]!), 9) + pad(pct(r["fwdbwd"]! / r["sgemm3"]!), 7))
            }
        }
        let totalFlops = (skipLayers ? [] : a0ConvShapes).map { $0.geometry(batch).flops }
        func weighted(_ key: String) -> Double {
            // Total flops over total time: the ratio a whole network would see.
            let time = zip(rows, totalFlops).map { $1 / ($0[key]! * 1e9) }.reduce(0, +)
            return totalFlops.reduce(0, +) / time / 1e9
        }
        let fwdRatio = weighted("fwd") / weighted("sgemm")
        let bwdRatio = weighted("fwdbwd") / weighted("sgemm3")
        var training: [String: Double] = [:], qat: [String: Double] = [:], inference: [String: [String: Double]] = [:]
        for name in models.map(\.rawValue) {
            let config = try ModelConfig.named(name, block: .qarepvgg)
            training[name] = try measureTraining(config)
            qat[name] = try measureQAT(config)
            inference[name] = try measureInference(config)
        }
        let handOff = measureHandOff()
        if json {
            let layers = zip(names, rows).map { name, r in
                Report.Layer(name: name, fwd: r["fwd"]!, sgemm: r["sgemm"]!, fwdbwd: r["fwdbwd"]!, sgemm3: r["sgemm3"]!)
            }
            try printJSON(Report(batch: batch, trainImagesPerSecond: training, qatImagesPerSecond: qat,
                                 inferenceImagesPerSecond: inference, blasCore: BLASCore.name,
                                 floatKernel: "\(FloatKernelPath.best)", integerKernel: "\(IntegerKernelPath.best)",
                                 convForwardVsSgemm: skipLayers ? nil : fwdRatio,
                                 convForwardBackwardVsSgemm: skipLayers ? nil : bwdRatio,
                                 handOffMicroseconds: handOff, layers: layers))
        } else {
            if !skipLayers {
                print(String(format: "all layers: forward %.0f%% of sgemm, forward+backward %.0f%% of sgemm", 100 * fwdRatio, 100 * bwdRatio))
                print("")
            }
            print("QARepVGG, images/s (training: batch \(batch), multi-branch, SGD step included); "
                  + "OpenBLAS \(BLASCore.name), float \(FloatKernelPath.best), integer \(IntegerKernelPath.best) kernels")
            print(pad("model", 10) + pad("train", 8) + pad("QAT", 8) + pad("FP32 deploy b\(batch)", 18) + pad("INT8 b\(batch)", 12) + pad("ratio", 7)
                  + pad("FP32 deploy b1", 16) + pad("INT8 b1", 9) + pad("ratio", 7))
            for name in models.map(\.rawValue) {
                let i = inference[name]!
                print(pad(name, 10) + pad(String(format: "%.0f", training[name]!), 8) + pad(String(format: "%.0f", qat[name]!), 8)
                      + pad(String(format: "%.0f", i["fp32_batch"]!), 18) + pad(String(format: "%.0f", i["int8_batch"]!), 12)
                      + pad(String(format: "%.2fx", i["int8_batch"]! / i["fp32_batch"]!), 7)
                      + pad(String(format: "%.0f", i["fp32_1"]!), 16) + pad(String(format: "%.0f", i["int8_1"]!), 9)
                      + pad(String(format: "%.2fx", i["int8_1"]! / i["fp32_1"]!), 7))
            }
            print(String(format: "kernel thread hand-off: %.2f us per parallel job of \(threads) workers", handOff))
        }
    }

    /// What `qarep bench --json` prints (`scripts/bench-peers` reads it).
    public struct Report: Codable, Sendable {
        public var batch: Int
        /// Per model name: images/s of a multi-branch training step and a QAT step.
        public var trainImagesPerSecond: [String: Double]
        public var qatImagesPerSecond: [String: Double]
        /// Per model name: `fp32_batch`, `int8_batch`, `fp32_1`, `int8_1` images/s.
        public var inferenceImagesPerSecond: [String: [String: Double]]
        public var blasCore: String
        public var floatKernel: String
        public var integerKernel: String
        /// Whole-network conv GFLOP/s over sgemm's on the same GEMMs.
        public var convForwardVsSgemm: Double?
        public var convForwardBackwardVsSgemm: Double?
        /// Median microseconds of one parallel job that does nothing, on
        /// `--threads` workers: what each kernel pays to share its work.
        public var handOffMicroseconds: Double
        public var layers: [Layer]

        /// GFLOP/s of one convolution shape: forward, sgemm, forward+backward, 3 sgemms.
        public struct Layer: Codable, Sendable {
            public var name: String
            public var fwd: Double, sgemm: Double, fwdbwd: Double, sgemm3: Double
        }
    }

    struct ConvShape {
        let name: String, cin: Int, cout: Int, size: Int, stride: Int
        func geometry(_ n: Int) -> ConvGeometry {
            ConvGeometry(batch: n, inChannels: cin, height: size, width: size, outChannels: cout,
                         kernelH: 3, kernelW: 3, stride: stride, padding: 1)
        }
    }

    /// Distinct 3x3 convolutions of RepVGG-A0 (widths 48-48-96-192-1280) on 28x28 images.
    var a0ConvShapes: [ConvShape] {
        [(1, 48, 28, 1), (48, 48, 28, 2), (48, 48, 14, 1), (48, 96, 14, 2), (96, 96, 7, 1),
         (96, 192, 7, 2), (192, 192, 4, 1), (192, 1280, 4, 2)].map { cin, cout, size, s in
            ConvShape(name: "\(cin)->\(cout) \(size)x\(size) s\(s)", cin: cin, cout: cout, size: size, stride: s)
        }
    }

    func measureConv(_ shape: ConvShape) -> [String: Double] {
        let g = shape.geometry(batch)
        var rng = SplitMix64(seed: 1)
        let x = Tensor.uniform([batch, shape.cin, shape.size, shape.size], bound: 1, rng: &rng)
        let w = Tensor.uniform([shape.cout, shape.cin, 3, 3], bound: 0.1, rng: &rng)
        let flops = g.flops
        let fwd = median { _ = noGrad { conv2d(x, weight: w, stride: shape.stride, padding: 1) } }
        let fwdbwd = median {
            let y = conv2d(x, weight: w, stride: shape.stride, padding: 1)
            y.backward(gradient: y.data)
            x.grad = nil; w.grad = nil
        }
        // The same GEMM shapes on plain buffers: forward, dW and dcol.
        let (M, N, K) = (g.outChannels, g.columns, g.patchSize)
        let a = [Float](repeating: 0.5, count: M * K), b = [Float](repeating: 0.25, count: K * N)
        var c = [Float](repeating: 0, count: M * N), dw = [Float](repeating: 0, count: M * K), dcol = [Float](repeating: 0, count: K * N)
        let gemm = median {
            sgemm(m: M, n: N, k: K, a: a, lda: K, b: b, ldb: N, c: &c, ldc: N)
        }
        let gemm3 = median {
            sgemm(m: M, n: N, k: K, a: a, lda: K, b: b, ldb: N, c: &c, ldc: N)
            sgemm(transB: true, m: M, n: K, k: N, a: c, lda: N, b: b, ldb: N, c: &dw, ldc: K)
            sgemm(transA: true, m: K, n: N, k: M, a: a, lda: K, b: c, ldb: N, c: &dcol, ldc: N)
        }
        return ["fwd": flops / fwd / 1e9, "sgemm": flops / gemm / 1e9,
                "fwdbwd": 3 * flops / fwdbwd / 1e9, "sgemm3": 3 * flops / gemm3 / 1e9]
    }

    /// Training images/s of the multi-branch model on synthetic images.
    func measureTraining(_ config: ModelConfig) throws -> Double {
        trainingThroughput(try RepVGGNet(config: config, seed: 1))
    }

    /// QAT training images/s: the post-BN form with fake quantization on
    /// every convolution's input and weight, calibrated on synthetic images,
    /// SGD step included; the same batch as `measureTraining`.
    func measureQAT(_ config: ModelConfig) throws -> Double {
        let net = try QuantizedNet(from: RepVGGNet(config: config, seed: 1), form: .postBN)
        try net.calibrate(on: syntheticImages(64))
        net.train()
        return trainingThroughput(net)
    }

    /// Images/s of `trainSteps` SGD steps of `model` (forward, backward,
    /// update) on one synthetic batch, after one untimed step.
    func trainingThroughput(_ model: some Module & Layer) -> Double {
        let opt = SGD(groups: ParameterGroup.standard(model, weightDecay: 1e-4), learningRate: 0.01)
        var rng = SplitMix64(seed: 2)
        let x = Tensor.uniform([batch, 1, 28, 28], bound: 1, rng: &rng, requiresGrad: false)
        let labels = (0..<batch).map { Int32($0 % 10) }
        let step = {
            let loss = crossEntropy(model(x), labels: labels)
            opt.zeroGrad(); loss.backward(); opt.step()
        }
        step()
        let elapsed = ContinuousClock().measure { for _ in 0..<trainSteps { step() } }
        return Double(trainSteps * batch) / seconds(elapsed)
    }

    /// `count` random 28x28 images (labels 0): calibration data for the speed measurements.
    func syntheticImages(_ count: Int) -> FashionMNIST {
        var rng = SplitMix64(seed: 3)
        return FashionMNIST(images: (0..<(count * 784)).map { _ in UInt8(rng.next() % 256) },
                            labels: [UInt8](repeating: 0, count: count))
    }

    /// Inference images/s of the FP32 deploy model and the INT8 engine, side
    /// by side, at batch `batch` and batch 1 (calibrated on synthetic images).
    func measureInference(_ config: ModelConfig) throws -> [String: Double] {
        let model = try RepVGGNet(config: config, seed: 1)
        model.eval()
        let deployed = model.deployed()
        let floatEngine = try DeployedEngine(deployed)
        var rng = SplitMix64(seed: 4)
        let engine = try Int8Engine(postTrainingQuantize(deployed, calibration: syntheticImages(64)).convertToInt8())
        let big = Tensor.uniform([batch, 1, 28, 28], bound: 1, rng: &rng, requiresGrad: false)
        let one = Tensor.uniform([1, 1, 28, 28], bound: 1, rng: &rng, requiresGrad: false)
        let singles = max(20, batch / 2)
        let fp32Batch = median { _ = floatEngine.logits(big) }
        let int8Batch = median { _ = engine.logits(big) }
        let fp32One = median { for _ in 0..<singles { _ = floatEngine.logits(one) } }
        let int8One = median { for _ in 0..<singles { _ = engine.logits(one) } }
        return ["fp32_batch": Double(batch) / fp32Batch, "int8_batch": Double(batch) / int8Batch,
                "fp32_1": Double(singles) / fp32One, "int8_1": Double(singles) / int8One]
    }

    /// Microseconds per `parallelFor` job whose workers do nothing.
    func measureHandOff() -> Double {
        let jobs = 2_000
        let marks = UnsafeMutablePointer<Int>.allocate(capacity: threads)
        defer { marks.deallocate() }
        let perBatch = median {
            for job in 0..<jobs { parallelFor(threads, threads: threads) { worker, _ in marks[worker] = job } }
        }
        return perBatch / Double(jobs) * 1e6
    }

    func median(_ body: () -> Void) -> Double {
        body()  // warm-up
        let clock = ContinuousClock()
        let times = (0..<repeats).map { _ in seconds(clock.measure(body)) }
        return times.sorted()[times.count / 2]
    }
}

func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}

func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
func f1(_ v: Double) -> String { String(format: "%.1f", v) }
func pct(_ v: Double) -> String { String(format: "%.0f%%", 100 * v) }
