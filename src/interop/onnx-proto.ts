/**
 * The subset of the ONNX protobuf schema that our exporter writes, encoded with protobufjs. Field numbers follow
 * onnx.proto (the ONNX IR specification); only the messages and fields we emit are declared.
 */
import { createRequire } from 'node:module';
import type * as Protobuf from 'protobufjs';
import { HypeError } from '../errors.ts';

const SCHEMA = `
syntax = "proto2";
package onnx;

message AttributeProto {
  enum AttributeType { UNDEFINED = 0; FLOAT = 1; INT = 2; STRING = 3; TENSOR = 4; GRAPH = 5;
                       FLOATS = 6; INTS = 7; STRINGS = 8; }
  optional string name = 1;
  optional float f = 2;
  optional int64 i = 3;
  optional bytes s = 4;
  optional TensorProto t = 5;
  repeated float floats = 7;
  repeated int64 ints = 8;
  optional AttributeType type = 20;
}

message NodeProto {
  repeated string input = 1;
  repeated string output = 2;
  optional string name = 3;
  optional string op_type = 4;
  repeated AttributeProto attribute = 5;
  optional string domain = 7;
}

message TensorShapeProto {
  message Dimension {
    oneof value { int64 dim_value = 1; string dim_param = 2; }
  }
  repeated Dimension dim = 1;
}

message TypeProto {
  message Tensor {
    optional int32 elem_type = 1;
    optional TensorShapeProto shape = 2;
  }
  oneof value { Tensor tensor_type = 1; }
}

message ValueInfoProto {
  optional string name = 1;
  optional TypeProto type = 2;
}

message TensorProto {
  repeated int64 dims = 1;
  optional int32 data_type = 2;
  optional string name = 8;
  optional bytes raw_data = 9;
}

message OperatorSetIdProto {
  optional string domain = 1;
  optional int64 version = 2;
}

message GraphProto {
  repeated NodeProto node = 1;
  optional string name = 2;
  repeated TensorProto initializer = 5;
  repeated ValueInfoProto input = 11;
  repeated ValueInfoProto output = 12;
}

message ModelProto {
  optional int64 ir_version = 1;
  optional string producer_name = 2;
  optional string producer_version = 3;
  optional GraphProto graph = 7;
  repeated OperatorSetIdProto opset_import = 8;
}
`;

let cachedType: Protobuf.Type | null = null;

/**
 * protobufjs is an optional peer dependency, loaded on the first export (synchronously: the exporter's API is
 * synchronous), so installing the library does not pull it in for users who never export ONNX.
 */
function modelProto(): Protobuf.Type {
  if (cachedType) return cachedType;
  let protobuf: typeof Protobuf;
  try {
    protobuf = createRequire(import.meta.url)('protobufjs') as typeof Protobuf;
  } catch {
    throw new HypeError(
      'dependency',
      'ONNX export needs the optional package protobufjs; install it with `npm install protobufjs`',
    );
  }
  cachedType = protobuf.parse(SCHEMA).root.lookupType('onnx.ModelProto');
  return cachedType;
}

/** ONNX TensorProto.DataType codes for the element types we use. */
export const OnnxDataType = { FLOAT: 1, INT32: 6, INT64: 7, FLOAT16: 10, DOUBLE: 11 } as const;
export type OnnxDataTypeCode = (typeof OnnxDataType)[keyof typeof OnnxDataType];

/** AttributeProto.AttributeType codes. */
export const OnnxAttributeType = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7 } as const;

/** Serialises a plain ModelProto object (field names as in the schema above, camelCase) to ONNX bytes. */
export function encodeModel(model: Record<string, unknown>): Uint8Array {
  const modelType = modelProto();
  const err = modelType.verify(model);
  if (err) throw new Error(`internal: malformed ONNX model object: ${err}`);
  return modelType.encode(modelType.fromObject(model)).finish();
}

/** Parses ONNX bytes back into a plain object (for tests and inspection). */
export function decodeModel(bytes: Uint8Array): Record<string, unknown> {
  const modelType = modelProto();
  return modelType.toObject(modelType.decode(bytes), { longs: Number, bytes: Buffer }) as Record<string, unknown>;
}
