import Foundation

/// Knowledge distillation on logits (Hinton et al. 2015), for a student
/// `[N, classes]` and its teacher's logits (constants):
///
///     T^2 * mean_n KL( softmax(teacher_n / T) || softmax(student_n / T) )
///
/// The `T^2` keeps the gradient's size independent of the temperature; the
/// gradient is `T * (softmax(student / T) - softmax(teacher / T)) / N`. It is
/// 0 when the two agree, PyTorch's
/// `kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean") * T * T`.
public func distillationLoss(student: Tensor, teacher: Tensor, temperature: Float) -> Tensor {
    precondition(student.rank == 2 && student.shape == teacher.shape,
                 "distillationLoss: student \(student.shape) and teacher \(teacher.shape) logits differ in shape")
    precondition(temperature > 0 && temperature.isFinite, "distillation temperature must be positive, got \(temperature)")
    let (N, K) = (student.shape[0], student.shape[1])
    /// log-softmax of row `n` of `z / T`, in Double.
    func logSoftmax(_ z: [Float], _ n: Int) -> [Double] {
        let row = (0..<K).map { Double(z[n * K + $0]) / Double(temperature) }
        let mx = row.max()!
        let logZ = mx + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - mx) })
        return row.map { $0 - logZ }
    }
    var loss = 0.0
    var difference = [Float](repeating: 0, count: N * K)   // softmax(s / T) - softmax(t / T)
    for n in 0..<N {
        let ls = logSoftmax(student.data, n), lt = logSoftmax(teacher.data, n)
        for k in 0..<K {
            let pt = Foundation.exp(lt[k])
            loss += pt * (lt[k] - ls[k])
            difference[n * K + k] = Float(Foundation.exp(ls[k]) - pt)
        }
    }
    let t = Double(temperature)
    return Tensor.result([Float(loss * t * t / Double(N))], shape: [], inputs: [student]) { g in
        student.accumulateGrad { dz in
            let scale = g[0] * temperature / Float(N)
            for i in 0..<(N * K) { dz[i] += scale * difference[i] }
        }
    }
}
