/// Batch-major `[N, C, P]` to channel-major `[C, N, P]` (P = pixels per
/// plane): a copy of contiguous planes, the glue between NCHW tensors and the
/// channel-major GEMM output of a batched convolution.
public func batchToChannelMajor(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>,
                                batch: Int, channels: Int, plane: Int) {
    parallelChunks(batch, work: batch * channels * plane) { images in
        for n in images {
            for c in 0..<channels {
                (dst + (c * batch + n) * plane).update(from: src + (n * channels + c) * plane, count: plane)
            }
        }
    }
}

/// Channel-major `[C, N, P]` to batch-major `[N, C, P]`; the inverse of
/// `batchToChannelMajor`.
public func channelToBatchMajor(_ src: UnsafePointer<Float>, _ dst: UnsafeMutablePointer<Float>,
                                batch: Int, channels: Int, plane: Int) {
    parallelChunks(channels, work: batch * channels * plane) { range in
        for c in range {
            for n in 0..<batch {
                (dst + (n * channels + c) * plane).update(from: src + (c * batch + n) * plane, count: plane)
            }
        }
    }
}
