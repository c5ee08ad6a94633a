/**
 * A small builder for ONNX graphs: declare inputs, constants and nodes with readable calls, get model bytes that
 * onnxruntime (or any ONNX runtime) loads. Names are generated so callers only name what they expose.
 */
import { fp16Bits } from '../numerics/float-formats.ts';
import { encodeModel, OnnxAttributeType, OnnxDataType, type OnnxDataTypeCode } from './onnx-proto.ts';

/** A dimension: a fixed size or a symbolic name (e.g. 'batch', 'length'). */
export type Dim = number | string;

export type AttributeValue = number | string | readonly number[] | { floats: readonly number[] };

interface Node {
  opType: string;
  domain?: string;
  input: string[];
  output: string[];
  name: string;
  attribute: Record<string, unknown>[];
}

export interface ModelOptions {
  /** Default-domain opset version (17 has LayerNormalization; 20 has Gelu). */
  opset?: number;
  /** Add the com.microsoft contrib domain (for MultiHeadAttention). */
  microsoft?: boolean;
  producerVersion?: string;
}

function valueInfo(name: string, elemType: OnnxDataTypeCode, dims: readonly Dim[]) {
  return {
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

/**
 * Attributes: integers become INT and other numbers FLOAT (node() can force FLOAT by name); number arrays become
 * INTS, `{ floats: [...] }` FLOATS, strings STRING.
 */
function attribute(name: string, value: AttributeValue): Record<string, unknown> {
  if (typeof value === 'string') return { name, type: OnnxAttributeType.STRING, s: Buffer.from(value, 'utf8') };
  if (typeof value === 'number') {
    return Number.isInteger(value)
      ? { name, type: OnnxAttributeType.INT, i: value }
      : { name, type: OnnxAttributeType.FLOAT, f: value };
  }
  if ('floats' in value) return { name, type: OnnxAttributeType.FLOATS, floats: [...value.floats] };
  return { name, type: OnnxAttributeType.INTS, ints: [...value] };
}

export class OnnxGraph {
  private nodes: Node[] = [];
  private inputs: ReturnType<typeof valueInfo>[] = [];
  private outputs: ReturnType<typeof valueInfo>[] = [];
  private initializers: Record<string, unknown>[] = [];
  private counter = 0;

  constructor(readonly name: string) {}

  private fresh(prefix: string): string {
    return `${prefix}_${this.counter++}`;
  }

  input(name: string, dims: readonly Dim[], elemType: OnnxDataTypeCode = OnnxDataType.FLOAT): string {
    this.inputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  output(name: string, dims: readonly Dim[], elemType: OnnxDataTypeCode = OnnxDataType.FLOAT): string {
    this.outputs.push(valueInfo(name, elemType, dims));
    return name;
  }

  /** A float32 constant (weights, per-head parameters). */
  constFloat(data: ArrayLike<number>, dims: readonly number[], name = this.fresh('const')): string {
    const f32 = Float32Array.from(data);
    this.initializers.push({
      name,
      dims: [...dims],
      dataType: OnnxDataType.FLOAT,
      rawData: Buffer.from(f32.buffer, f32.byteOffset, f32.byteLength),
    });
    return name;
  }

  /** A float16 constant: each value rounded to the nearest fp16 (IEEE binary16 bits, little-endian). */
  constFloat16(data: ArrayLike<number>, dims: readonly number[], name = this.fresh('const')): string {
    const bits = Uint16Array.from(Array.from(data, fp16Bits));
    this.initializers.push({
      name,
      dims: [...dims],
      dataType: OnnxDataType.FLOAT16,
      rawData: Buffer.from(bits.buffer, bits.byteOffset, bits.byteLength),
    });
    return name;
  }

  /** An int64 constant (shapes, axes). */
  constInt64(data: readonly number[], dims: readonly number[] = [data.length], name = this.fresh('ints')): string {
    const i64 = BigInt64Array.from(data.map((x) => BigInt(x)));
    this.initializers.push({
      name,
      dims: [...dims],
      dataType: OnnxDataType.INT64,
      rawData: Buffer.from(i64.buffer, i64.byteOffset, i64.byteLength),
    });
    return name;
  }

  /**
   * Adds a node and returns its output names (`outputs` of them). Attributes named in `floatAttrs` are written as
   * FLOAT even when integral (ONNX is strict about attribute types).
   */
  node(
    opType: string,
    inputs: readonly string[],
    attrs: Record<string, AttributeValue> = {},
    options: { outputs?: number; domain?: string; floatAttrs?: readonly string[]; names?: readonly string[] } = {},
  ): string[] {
    const count = options.names?.length ?? options.outputs ?? 1;
    const output = options.names
      ? [...options.names]
      : Array.from({ length: count }, () => this.fresh(opType.toLowerCase()));
    const attribute_ = Object.entries(attrs).map(([k, v]) =>
      options.floatAttrs?.includes(k) && typeof v === 'number'
        ? { name: k, type: OnnxAttributeType.FLOAT, f: v }
        : attribute(k, v),
    );
    this.nodes.push({
      opType,
      ...(options.domain ? { domain: options.domain } : {}),
      input: [...inputs],
      output,
      name: this.fresh(`n_${opType}`),
      attribute: attribute_,
    });
    return output;
  }

  /** Single-output shorthand for node(). */
  op(
    opType: string,
    inputs: readonly string[],
    attrs: Record<string, AttributeValue> = {},
    floatAttrs: readonly string[] = [],
  ): string {
    return this.node(opType, inputs, attrs, { floatAttrs })[0]!;
  }

  toBytes(options: ModelOptions = {}): Uint8Array {
    const opsetImport: Record<string, unknown>[] = [{ domain: '', version: options.opset ?? 17 }];
    if (options.microsoft) opsetImport.push({ domain: 'com.microsoft', version: 1 });
    return encodeModel({
      irVersion: 8,
      producerName: 'hype-attention',
      producerVersion: options.producerVersion ?? '0',
      opsetImport,
      graph: {
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
  }
}
