// require('hype-attention') lands here: the package is ESM only, so say how to load it instead of failing obscurely.
throw new Error(
  "hype-attention is an ES module and cannot be loaded with require(); use `import ... from 'hype-attention'`, or " +
    "`const hype = await import('hype-attention')` from CommonJS.",
);
