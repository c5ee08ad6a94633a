/**
 * 'hype-attention/study' (Node only): the study of positional encodings (language modelling, flip-flop, recall,
 * precision), resumable, writing results JSON, a report and plots (plots need the optional vega and vega-lite).
 */
export { planFor, runStudy, writeReport, type StudyOptions } from '../study/run.ts';
export { fullPlan, quickPlan, EXPERIMENTS, type Experiment, type StudyPlan } from '../study/plan.ts';
