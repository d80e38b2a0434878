import Foundation
import SwiftProtobuf

/// Writes TensorBoard event files: TFRecords (length, masked CRC-32C of the
/// length, an `Event` protobuf, its masked CRC-32C) in
/// `DIR/events.out.tfevents.<seconds>.<host>`, the first record announcing
/// `brain.Event:2`, then one scalar summary per `add`. `tensorboard --logdir
/// DIR` reads them. Each writer starts a new file, so a resumed run adds one
/// beside the earlier ones, as TensorFlow's writers do.
public final class TensorBoardWriter {
    /// The event file being written.
    public let path: String
    private let handle: FileHandle

    /// Creates `directory` if needed and a new event file in it.
    /// - Throws: when the directory or the file cannot be created.
    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let now = Date().timeIntervalSince1970
        var name = "events.out.tfevents.\(Int(now)).\(ProcessInfo.processInfo.hostName)"
        // Two writers started within the same second get different files.
        var suffix = 1
        while FileManager.default.fileExists(atPath: (directory as NSString).appendingPathComponent(name)) {
            name = "events.out.tfevents.\(Int(now)).\(ProcessInfo.processInfo.hostName).\(suffix)"
            suffix += 1
        }
        path = (directory as NSString).appendingPathComponent(name)
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw TensorBoardError("\(path): cannot create the event file")
        }
        self.handle = handle
        var first = Tensorboard_Event()
        first.wallTime = now
        first.fileVersion = "brain.Event:2"
        try write(first)
    }

    deinit { try? handle.close() }

    /// Adds scalars (tag, value) at `step`, as one event.
    public func add(_ scalars: [(tag: String, value: Double)], step: Int, wallTime: Double = Date().timeIntervalSince1970) throws {
        var event = Tensorboard_Event()
        event.wallTime = wallTime
        event.step = Int64(step)
        event.summary.value = scalars.map { tag, value in
            var v = Tensorboard_Summary.Value()
            v.tag = tag
            v.simpleValue = Float(value)
            return v
        }
        try write(event)
    }

    /// Pushes what was written to the disk.
    public func flush() throws { try handle.synchronize() }

    private func write(_ event: Tensorboard_Event) throws {
        let data: [UInt8] = try event.serializedBytes()
        var record = [UInt8]()
        record.reserveCapacity(data.count + 16)
        let length = withUnsafeBytes(of: UInt64(data.count).littleEndian, Array.init)
        record += length
        record += withUnsafeBytes(of: CRC32C.masked(length).littleEndian, Array.init)
        record += data
        record += withUnsafeBytes(of: CRC32C.masked(data).littleEndian, Array.init)
        do { try handle.write(contentsOf: record) } catch { throw TensorBoardError("\(path): \(error.localizedDescription)") }
    }
}

/// An event file that could not be written.
public struct TensorBoardError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
