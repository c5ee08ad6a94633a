import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    // Two cores: forks keep native threads and heavy fp64 loops out of each other's way.
    pool: 'forks',
    maxWorkers: 2,
  },
});
