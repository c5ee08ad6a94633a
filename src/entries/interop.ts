/**
 * 'hype-attention/interop' (Node only): safetensors read/write and ONNX export (the export needs the optional
 * protobufjs package and says so when it is missing).
 */
export {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  writeSafetensors,
  type SafeDType,
  type SafeFile,
  type SafeTensor,
  type TensorToWrite,
} from '../interop/safetensors.ts';
export { ONNX_ENCODINGS, exportOnnx, type OnnxExport, type OnnxExportOptions } from '../interop/onnx-export.ts';
