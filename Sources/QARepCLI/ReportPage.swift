import Foundation
import QARep

/// `report.html` of `qarep report`: one self-contained page (inline SVG, no
/// script, no network), well-formed XML, so it opens offline and parses.
/// With a second report, every chart shows both side by side.
enum ReportPage {
    /// Colours of the first and the compared checkpoint.
    static let colours = ["#3b6ea5", "#d9822b"]

    static func html(_ reports: [(name: String, report: QuantizationReport)]) -> String {
        let first = reports[0].report
        var body = "<h1>QARep quantization report</h1>\n"
        body += "<p>Each layer is one deployed 3x3 convolution. C1 (wide fused weights) shows as a large max|w|/std and "
            + "a low weight SQNR; C2 (wide activations) as a large activation max and a low activation SQNR.</p>\n"
        body += summaryTable(reports)
        let labels = first.layers.map(\.name)
        func series(_ value: (QuantizationReport.Layer) -> Double) -> [(String, [Double], String)] {
            reports.enumerated().map { k, r in (r.name, r.report.layers.map(value), colours[k % colours.count]) }
        }
        body += barChart("max|w| / std of the fused weight (C1)", labels: labels, series: series(\.weightMaxOverStd))
        body += barChart("Weight SQNR at 8 bits, dB (higher is better)", labels: labels, series: series(\.weightSqnrDb))
        body += barChart("Largest |activation| at the convolution input (C2)", labels: labels, series: series(\.activationMax))
        body += barChart("Activation SQNR at 8 bits, dB (higher is better)", labels: labels, series: series(\.activationSqnrDb))
        if first.sensitivityBits != 8 {
            let key = "\(first.sensitivityBits)"
            body += barChart("Weight SQNR at \(key) bits, dB", labels: labels, series: series { $0.weightSqnrDbByBits[key] ?? 0 })
            body += barChart("Activation SQNR at \(key) bits, dB", labels: labels, series: series { $0.activationSqnrDbByBits[key] ?? 0 })
        }
        for (name, report) in reports {
            body += "<h2>\(escape(name)): the worst layers</h2>\n"
            let worstWeights = report.layers.sorted { $0.weightMaxOverStd > $1.weightMaxOverStd }.prefix(3)
            let worstActivations = report.layers.sorted { $0.activationSqnrDb < $1.activationSqnrDb }.prefix(3)
            body += "<div class=\"row\">\n"
            for l in worstWeights {
                body += histogramChart("\(l.name) weights", l.weightHistogram, low: -l.maxAbsWeight, high: l.maxAbsWeight)
            }
            body += "</div>\n<div class=\"row\">\n"
            for l in worstActivations {
                body += histogramChart("\(l.name) input activations", l.activationHistogram, low: l.activationLow, high: l.activationHigh)
            }
            body += "</div>\n"
            body += sensitivityTable(report)
            body += layerTable(report)
        }
        return """
        <?xml version="1.0" encoding="UTF-8"?>
        <!DOCTYPE html>
        <html xmlns="http://www.w3.org/1999/xhtml" lang="en">
        <head>
        <meta charset="utf-8"/>
        <title>QARep quantization report</title>
        <style>
        body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
        table { border-collapse: collapse; margin: 1em 0; font-size: 90%; }
        td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
        th:first-child, td:first-child { text-align: left; }
        .row { display: flex; flex-wrap: wrap; gap: 1em; }
        .identity { color: #b22; font-weight: bold; }
        </style>
        </head>
        <body>
        \(body)</body>
        </html>

        """
    }

    static func summaryTable(_ reports: [(name: String, report: QuantizationReport)]) -> String {
        let widths = reports[0].report.bitWidths
        var s = "<table>\n<tr><th>checkpoint</th><th>model</th><th>FP32 top-1</th>"
        for b in widths { s += "<th>PTQ W\(b)A\(b) top-1</th>" }
        s += "<th>calibration / test images</th></tr>\n"
        for (k, (name, r)) in reports.enumerated() {
            s += "<tr><td><span style=\"color:\(colours[k % colours.count])\">&#9632;</span> \(escape(name))</td>"
            s += "<td>\(escape(r.config)) \(escape(r.block))</td><td>\(percent(r.fp32Top1))</td>"
            for b in widths { s += "<td>\(r.ptqTop1["\(b)"].map(percent) ?? "-")</td>" }
            s += "<td>\(r.calibrationImages) / \(r.testImages)</td></tr>\n"
        }
        return s + "</table>\n"
    }

    static func sensitivityTable(_ r: QuantizationReport) -> String {
        guard !r.sensitivity.isEmpty else { return "" }
        var s = "<h3>Sensitivity at W\(r.sensitivityBits)A\(r.sensitivityBits): the lowest-SQNR layers, each left in float alone</h3>\n"
        s += "<table>\n<tr><th>layer</th><th>SQNR, dB</th><th>PTQ top-1 with it in float</th><th>gain</th></tr>\n"
        for e in r.sensitivity {
            s += "<tr><td>\(escape(e.layer))</td><td>\(f1(e.sqnrDb))</td><td>\(percent(e.floatTop1))</td>"
                + "<td>\(String(format: "%+.2f", 100 * e.gain)) pp</td></tr>\n"
        }
        return s + "</table>\n"
    }

    static func layerTable(_ r: QuantizationReport) -> String {
        var s = "<h3>Every layer</h3>\n<table>\n<tr><th>layer</th><th>max|w|</th><th>std(w)</th><th>max|w|/std</th>"
            + "<th>BN scales gamma/sqrt(var+eps), min / mean / max per branch</th><th>activation max</th>"
            + "<th>weight SQNR</th><th>activation SQNR</th></tr>\n"
        for l in r.layers {
            let branches = l.branchScales.map { b in
                let text = "\(b.branch) \(String(format: "%.3g / %.3g / %.3g", b.min, b.mean, b.max))"
                return b.identity ? "<span class=\"identity\">\(text) (identity BN)</span>" : text
            }.joined(separator: "<br/>")
            s += "<tr><td>\(escape(l.name))</td><td>\(g3(l.maxAbsWeight))</td><td>\(g3(l.weightStd))</td><td>\(f1(l.weightMaxOverStd))</td>"
                + "<td>\(branches.isEmpty ? "-" : branches)</td><td>\(g3(l.activationMax))</td>"
                + "<td>\(f1(l.weightSqnrDb)) dB</td><td>\(f1(l.activationSqnrDb)) dB</td></tr>\n"
        }
        return s + "</table>\n"
    }

    /// Grouped vertical bars, one group per label, one bar per series.
    static func barChart(_ title: String, labels: [String], series: [(name: String, values: [Double], colour: String)]) -> String {
        let width = 1000.0, height = 260.0, left = 60.0, bottom = 70.0, top = 30.0
        let top1 = max(series.flatMap(\.values).max() ?? 1, 1e-9)
        let group = (width - left - 10) / Double(max(labels.count, 1))
        let bar = group * 0.8 / Double(max(series.count, 1))
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\">\n"
        svg += "<text x=\"\(left)\" y=\"18\" font-size=\"14\" font-weight=\"bold\">\(escape(title))</text>\n"
        let plot = height - bottom - top
        for tick in 0...4 {
            let v = top1 * Double(tick) / 4, y = top + plot * (1 - Double(tick) / 4)
            svg += "<line x1=\"\(left)\" y1=\(q(y)) x2=\"\(width - 10)\" y2=\(q(y)) stroke=\"#ddd\"/>"
            svg += "<text x=\"\(left - 4)\" y=\(q(y + 4)) font-size=\"10\" text-anchor=\"end\">\(g3(v))</text>\n"
        }
        for (i, label) in labels.enumerated() {
            let x0 = left + Double(i) * group + group * 0.1
            for (k, s) in series.enumerated() where i < s.values.count {
                let h = plot * max(0, s.values[i]) / top1
                svg += "<rect x=\(q(x0 + Double(k) * bar)) y=\(q(top + plot - h)) width=\(q(bar * 0.95)) height=\(q(h)) fill=\"\(s.colour)\">"
                    + "<title>\(escape(s.name)) \(escape(label)): \(g3(s.values[i]))</title></rect>\n"
            }
            let lx = x0 + group * 0.4, ly = top + plot + 8
            svg += "<text x=\(q(lx)) y=\(q(ly)) font-size=\"10\" transform=\"rotate(60 \(f1(lx)) \(f1(ly)))\">\(escape(label))</text>\n"
        }
        return svg + "</svg>\n"
    }

    /// A histogram of `counts` over `[low, high]`, on a log scale (outliers are the point).
    static func histogramChart(_ title: String, _ counts: [Int], low: Double, high: Double) -> String {
        let width = 330.0, height = 180.0, top = 24.0, bottom = 24.0
        let peak = log10(Double(max(counts.max() ?? 1, 1)) + 1)
        let bar = (width - 20) / Double(max(counts.count, 1))
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\">\n"
        svg += "<text x=\"10\" y=\"16\" font-size=\"12\" font-weight=\"bold\">\(escape(title)) (log count)</text>\n"
        let plot = height - top - bottom
        for (i, c) in counts.enumerated() {
            let h = plot * log10(Double(c) + 1) / max(peak, 1e-9)
            svg += "<rect x=\(q(10 + Double(i) * bar)) y=\(q(top + plot - h)) width=\(q(bar * 0.9)) height=\(q(h)) fill=\"#555\"/>\n"
        }
        svg += "<text x=\"10\" y=\(q(height - 6)) font-size=\"10\">\(g3(low))</text>"
        svg += "<text x=\(q(width - 10)) y=\(q(height - 6)) font-size=\"10\" text-anchor=\"end\">\(g3(high))</text>\n"
        return svg + "</svg>\n"
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// A quoted attribute value with one decimal.
    static func q(_ v: Double) -> String { "\"\(f1(v))\"" }
    static func g3(_ v: Double) -> String { String(format: "%.3g", v) }
}
