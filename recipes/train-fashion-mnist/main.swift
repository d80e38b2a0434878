// Recipe: train a QARepVGG classifier on Fashion-MNIST with an explicit
// training loop, then fold it into its deploy form and save both.
//
//     swift run -c release train-fashion-mnist [epochs] [out-dir]
//     mpirun -np 2 .build/release/train-fashion-mnist [epochs] [out-dir]   (data-parallel)
//
// Everything here is QARep's public API; copy this file to start your own.

import Foundation
import QARep

let arguments = CommandLine.arguments
let epochs = arguments.count > 1 ? Int(arguments[1]) ?? 3 : 3
let outDir = arguments.count > 2 ? arguments[2] : "runs/recipe"

do {
    // Under `mpirun -np N` this joins the job (sync BN and observers follow); alone it does nothing.
    try DataParallel.startIfLaunchedByMPI()
    let primary = DataParallel.isPrimary

    // Data: 60,000 training and 10,000 test images from Debian's dataset-fashion-mnist.
    let train = try FashionMNIST.load(split: .train)
    let test = try FashionMNIST.load(split: .test)

    // Model: the `tiny` config (widths 16-16-32-64-128) with QARepVGG blocks.
    let model = try RepVGGNet(config: ModelConfig.named("tiny", block: .qarepvgg), seed: 0)

    // SGD with momentum; weight decay on kernels only, none on BN and biases.
    let batchSize = 64
    let stepsPerEpoch = train.count / batchSize
    let optimizer = SGD(groups: ParameterGroup.standard(model, weightDecay: 1e-4), learningRate: 0.1, momentum: 0.9)
    let schedule = LearningRateSchedule.warmupCosine(base: 0.1, warmup: stepsPerEpoch / 2, total: epochs * stepsPerEpoch)

    // Each rank loads its rows of every global batch (all of them, alone).
    let loader = DataLoader(dataset: train, batchSize: batchSize, shuffle: true, augment: true, seed: 0, dropLast: true,
                            shard: BatchShard.current)
    var step = 0
    for epoch in 0..<epochs {
        model.train()
        var lossSum = 0.0, seen = 0
        for batch in loader.batches(epoch: epoch) {
            optimizer.learningRate = schedule.learningRate(step: step, stepsPerEpoch: stepsPerEpoch)
            let x = Tensor(batch.images, shape: [batch.count, 1, 28, 28])
            // This rank's share of the global batch's mean loss (the whole of it, alone).
            let loss = crossEntropy(model(x), labels: batch.labels) * (Float(batch.count) / Float(batchSize))
            optimizer.zeroGrad()
            loss.backward()
            DataParallel.sumGradients(of: optimizer)   // the global batch's gradients, on every rank
            optimizer.step()
            step += 1
            lossSum += Double(loss.item) * Double(batchSize)
            seen += batch.count
        }
        var totals = [lossSum, Double(seen)]
        DataParallel.sum(&totals)
        let top1 = evaluate(model, on: test).top1
        if primary { print(String(format: "epoch %d  loss %.4f  test top-1 %.2f%%", epoch + 1, totals[0] / totals[1], 100 * top1)) }
    }

    // Deploy: every block becomes one 3x3 convolution with bias; predictions do not change.
    let deployed = model.deployed()
    guard primary else { DataParallel.finish(); exit(0) }   // rank 0 reports and saves
    print(String(format: "deployed test top-1 %.2f%%", 100 * evaluate(deployed, on: test).top1))

    try FileManager.default.createDirectory(atPath: outDir, withIntermediateDirectories: true)
    try Checkpoint.save(model, to: outDir + "/tiny-qarepvgg.safetensors")
    try Checkpoint.save(deployed, to: outDir + "/tiny-qarepvgg-deploy.safetensors")
    print("saved \(outDir)/tiny-qarepvgg.safetensors and its deploy form")
    DataParallel.finish()
} catch {
    FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    if let job = DataParallel.communicator { job.abort(code: 1) }   // end every rank, not just this one
    exit(1)
}
