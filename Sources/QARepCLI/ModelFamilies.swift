import Foundation
import QARep

// The command line's models beyond the RepVGG family: `--model resnetN`
// names a `ResNet`, and a checkpoint's `family` entry says which kind of run
// or quantization path reads it. RepVGG files have no family entry.

/// The family a QARep file records, or nil for a RepVGG-family (or PyTorch) file.
func checkpointFamily(_ path: String) throws -> String? { try Checkpoint.describe(path).family }

/// The family of the run saved in `directory` (its `last` checkpoint), or nil
/// when there is none yet or it is a RepVGG run.
func runFamily(in directory: String) throws -> String? {
    let last = (directory as NSString).appendingPathComponent(TrainingRun.lastFile)
    guard FileManager.default.fileExists(atPath: last) else { return nil }
    return try checkpointFamily(last)
}

/// Refuses a file of a family the command does not handle, in one line.
func requireKnownFamily(_ family: String?, of path: String) throws {
    if let family, family != ResNet.family {
        throw CommandError("\((path as NSString).lastPathComponent) holds a \(family) model, which this qarep does not build")
    }
}

/// What `qarep train` needs of an FP32 run, whichever model it trains.
protocol FP32TrainingRun: AnyObject {
    var state: TrainingState { get }
    var directory: String? { get }
    var controls: RunControls { get set }
    func run(train: any Dataset, validation: (any Dataset)?, test: (any Dataset)?, until: Int?,
             onEpochEnd: (EpochSummary) -> Void) throws -> [EpochSummary]
}

extension TrainingRun: FP32TrainingRun {}
extension ModelTrainingRun: FP32TrainingRun {}
