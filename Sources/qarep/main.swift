// The `qarep` executable: the commands live in the QARepCLI library, where
// tests run them in-process.
import QARepCLI

QARepCommand.main()
