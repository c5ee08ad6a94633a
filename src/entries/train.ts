/**
 * 'hype-attention/train' (Node only): byte corpora, the training loop with checkpoints and resume, held-out
 * evaluation in bits per byte; Fashion-MNIST (IDX files) and the vision transformer's training run and accuracy.
 */
export { TRAIN_DEFAULTS, learningRate, parseTrainConfig, type TrainConfig } from '../train/config.ts';
export { DEFAULT_CORPUS, loadCorpus, type ByteCorpus } from '../train/corpus.ts';
export { evaluateHeldOut, evaluateHeldOutAsync, type EvalOptions, type EvalResult } from '../train/evaluate.ts';
export { saveCheckpointAsync } from '../train/checkpoint.ts';
export { enqueueStep, trainingStep, type StepInput } from '../train/step.ts';
export { AdamW, clipGradients, globalGradNorm } from '../train/optimizer.ts';
export { generatorSource, windowSource, type BatchSource } from '../train/source.ts';
export {
  TrainingRun,
  loadRunModel,
  readLossLog,
  type DataOptions,
  type RunControl,
  type RunSummary,
  type StepRecord,
} from '../train/trainer.ts';
export { FASHION_CLASSES, loadFashionMnist, loadIdxPair, parseIdx, type ImageSet } from '../vision/idx.ts';
export { imageBatch } from '../vision/images.ts';
export { VisionRun, evaluateAccuracy, type AccuracyResult } from '../vision/train.ts';
