/** 'hype-attention/cli' (Node only): the `hype` command line as a function, for embedding or testing. */
export { buildProgram, main } from '../cli/main.ts';
