import Foundation
import Testing
import QARep

@Suite("Data parallelism")
struct DataParallelTests {
    @Test("Shards of a batch are contiguous, in rank order, cover it exactly and differ in size by at most one")
    func shardsPartitionTheBatch() {
        for count in [0, 1, 7, 64, 128, 129] {
            for size in 1...5 {
                let shards = (0..<size).map { DataParallel.shard(of: count, rank: $0, size: size) }
                #expect(shards.first!.lowerBound == 0 && shards.last!.upperBound == count)
                for (a, b) in zip(shards, shards.dropFirst()) { #expect(a.upperBound == b.lowerBound) }
                let sizes = shards.map(\.count)
                #expect(sizes.max()! - sizes.min()! <= 1, "\(count) over \(size): \(sizes)")
            }
        }
    }

    @Test("A sharded loader gives each rank exactly its rows of the whole batch, augmentation included",
          arguments: [2, 3])
    func shardedLoaderMatchesWholeBatches(ranks: Int) {
        let data = syntheticBands(count: 100, seed: 5)
        func loader(_ shard: BatchShard?) -> DataLoader {
            DataLoader(dataset: data, batchSize: 32, shuffle: true, augment: true, seed: 9, dropLast: false, prefetch: 0, shard: shard)
        }
        let whole = Array(loader(nil).batches(epoch: 1))
        let parts = (0..<ranks).map { Array(loader(BatchShard(rank: $0, of: ranks)).batches(epoch: 1)) }
        #expect(whole.count == 4 && parts.allSatisfy { $0.count == whole.count })
        for (i, batch) in whole.enumerated() {
            let joined = parts.map { $0[i] }
            #expect(joined.flatMap(\.images) == batch.images, "batch \(i)")
            #expect(joined.flatMap(\.labels) == batch.labels && joined.flatMap(\.indices) == batch.indices, "batch \(i)")
        }
    }

    @Test("Only Open MPI's mpirun with more than one rank starts a job; another launcher is one clear error")
    func launcherDetection() throws {
        #expect(try DataParallel.startIfLaunchedByMPI(environment: [:]) == nil)
        #expect(try DataParallel.startIfLaunchedByMPI(environment: ["OMPI_COMM_WORLD_SIZE": "1"]) == nil)
        let error = #expect(throws: DistributedError.self) {
            try DataParallel.startIfLaunchedByMPI(environment: ["PMI_SIZE": "4"])
        }
        #expect(error?.description.contains("Open MPI") == true)
        #expect(DataParallel.localSize(environment: ["OMPI_COMM_WORLD_LOCAL_SIZE": "2"]) == 2)
        #expect(DataParallel.localSize(environment: [:]) == 1)
        #expect(DataParallel.size == 1 && DataParallel.isPrimary, "the test process runs alone")
    }
}

/// The real thing: `qarep train` and `qarep qat` under `mpirun -np 2` against
/// one process with the whole batch. Needs Open MPI (`.ci/run` installs it).
@Suite("Data parallelism under mpirun", .serialized)
struct MPIEquivalenceTests {
    static let mpirun: String? = ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) }
    static var available: Bool { mpirun != nil && CommandLineResumeTests.binary != nil }

    /// Runs `qarep arguments` with `ranks` processes (plain, without mpirun, for 1).
    /// Returns stderr; expects exit status 0 unless `expectFailure`.
    @discardableResult
    static func qarep(_ arguments: [String], ranks: Int, expectFailure: Bool = false) throws -> String {
        let process = Process()
        if ranks == 1 {
            process.executableURL = URL(fileURLWithPath: CommandLineResumeTests.binary!)
            process.arguments = arguments
        } else {
            process.executableURL = URL(fileURLWithPath: mpirun!)
            // Root in CI's containers; more ranks than cores on small machines.
            process.arguments = ["--allow-run-as-root", "--oversubscribe", "-np", "\(ranks)", CommandLineResumeTests.binary!] + arguments
        }
        let stderr = Pipe()
        process.standardError = stderr
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let message = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if expectFailure {
            #expect(process.terminationStatus != 0, "\(arguments) succeeded with \(ranks) ranks")
        } else {
            #expect(process.terminationStatus == 0, "\(ranks) ranks, \(arguments): \(message)")
        }
        return message
    }

    /// Largest difference between the two checkpoints' model tensors (the
    /// optimizer's momentum left out), relative to the tensor's largest
    /// magnitude or 1, whichever is larger, and the key where it is.
    static func largestDifference(_ a: String, _ b: String) throws -> (error: Float, key: String) {
        let x = try SafeTensorsFile.read(from: a).tensors, y = try SafeTensorsFile.read(from: b).tensors
        #expect(Set(x.keys) == Set(y.keys))
        var worst: (Float, String) = (0, "")
        for (key, t) in x where t.dtype == .f32 && !key.hasPrefix("optimizer.") {
            let u = try t.floats(), v = try y[key]!.floats()
            let e = zip(u, v).reduce(Float(0)) { max($0, abs($1.0 - $1.1)) } / max(maxAbs(u), 1)
            if e > worst.0 { worst = (e, key) }
        }
        return worst
    }

    // 512 synthetic images, batch 128 (64 per rank): 4 steps an epoch.
    static func common(_ data: String, threads: Int) -> [String] {
        ["--data-root", data, "--batch-size", "128", "--val-split", "0", "--threads", "\(threads)", "--quiet", "--seed", "2"]
    }

    @Test("2 ranks x 64 take the training and QAT steps of 1 process x 128, to float round-off",
          .enabled(if: available, "needs Open MPI's mpirun (apt-get install openmpi-bin libopenmpi-dev)"))
    func twoRanksComputeWhatOneDoes() throws {
        let data = try syntheticDataRoot(), dir = temporaryDirectory("mpi")
        defer { try? FileManager.default.removeItem(atPath: data); try? FileManager.default.removeItem(atPath: dir) }
        // One process with 2 threads splits each batch's sums into the same two halves as 2 ranks
        // with 1 thread each, so what remains is round-off: the BN statistics' and the loss's sums in
        // another order (measured: 1.2e-7 after training, 1.7e-7 after QAT, one float ulp at 1).
        // Any real fault (a shard seen twice, per-rank BN statistics, gradients averaged instead of
        // summed, unsynchronized observers) is orders of magnitude above 1e-5.
        let twoSteps = ["--train-limit", "256", "--epochs", "1"]
        try Self.qarep(["train", "--epochs", "2", "--out", "\(dir)/fp32"] + Self.common(data, threads: 1), ranks: 1)
        for (ranks, threads) in [(1, 2), (2, 1)] {
            let flags = Self.common(data, threads: threads) + twoSteps
            try Self.qarep(["train", "--out", "\(dir)/train\(ranks)"] + flags, ranks: ranks)
            try Self.qarep(["qat", "--from", "\(dir)/fp32/last.safetensors", "--calib-images", "128", "--warmup-epochs", "0",
                            "--out", "\(dir)/qat\(ranks)"] + flags, ranks: ranks)
        }
        let train = try Self.largestDifference("\(dir)/train1/last.safetensors", "\(dir)/train2/last.safetensors")
        #expect(train.error < 1e-5, "training: \(train.key) differs by \(train.error)")
        let qat = try Self.largestDifference("\(dir)/qat1/last.safetensors", "\(dir)/qat2/last.safetensors")
        #expect(qat.error < 1e-5, "QAT: \(qat.key) differs by \(qat.error)")
        let file = try SafeTensorsFile.read(from: "\(dir)/qat2/last.safetensors")
        #expect(file.tensors.keys.contains { $0.hasSuffix("input_fake_quant.scale") }, "the QAT checkpoint holds its quantizers' scales")
    }

    @Test("A few dozen steps on 2 ranks stay with 1 process, and a run resumes with another rank count",
          .enabled(if: available, "needs Open MPI's mpirun"))
    func dozensOfStepsAndResume() throws {
        let data = try syntheticDataRoot(), dir = temporaryDirectory("mpi-long")
        defer { try? FileManager.default.removeItem(atPath: data); try? FileManager.default.removeItem(atPath: dir) }
        // 32 steps. Here round-off does not stay at round-off: a pre-activation within an ulp of a
        // ReLU's kink (or of a rounding boundary in QAT) takes the other side in one run, and SGD
        // carries that forward. The same happens between 1 and 2 threads in one process; measured
        // after 32 steps: 1.3e-2 (training), 2.8e-2 (QAT) for 2 ranks against 1 process.
        for ranks in [1, 2] {
            try Self.qarep(["train", "--epochs", "8", "--out", "\(dir)/train\(ranks)"] + Self.common(data, threads: 3 - ranks), ranks: ranks)
        }
        let train = try Self.largestDifference("\(dir)/train1/last.safetensors", "\(dir)/train2/last.safetensors")
        #expect(train.error < 0.1, "training: \(train.key) differs by \(train.error)")

        // The 2-rank run resumed by one process, and the 1-rank run by two: each goes on to epoch 10.
        try Self.qarep(["train", "--resume", "\(dir)/train2", "--epochs", "10", "--quiet"], ranks: 1)
        try Self.qarep(["train", "--resume", "\(dir)/train1", "--epochs", "10", "--threads", "1", "--quiet"], ranks: 2)
        for run in ["train1", "train2"] {
            let state = try #require(try Checkpoint.read("\(dir)/\(run)/last.safetensors").training)
            #expect(state.epoch == 10 && state.step == 40, "\(run): epoch \(state.epoch), step \(state.step)")
            #expect((state.lastTop1 ?? 0) > 0.5, "\(run) learned the bands: top-1 \(state.lastTop1 ?? 0)")
        }
        let resumed = try Self.largestDifference("\(dir)/train1/last.safetensors", "\(dir)/train2/last.safetensors")
        #expect(resumed.error < 0.1, "resumed: \(resumed.key) differs by \(resumed.error)")
    }

    @Test("Under mpirun, a command that does not train is refused on every rank, and a failing rank ends the job",
          .enabled(if: available, "needs Open MPI's mpirun"))
    func failuresEndTheJob() throws {
        let message = try Self.qarep(["bench", "--models", "tiny"], ranks: 2, expectFailure: true)
        #expect(message.contains("only train and qat are data-parallel"), "\(message)")
        // A missing data root: every rank fails to load, says so, and the job ends instead of hanging.
        let missing = try Self.qarep(["train", "--data-root", "/nonexistent-qarep-data", "--quiet"], ranks: 2, expectFailure: true)
        #expect(missing.contains("rank") && missing.contains("/nonexistent-qarep-data"), "\(missing)")
    }
}
