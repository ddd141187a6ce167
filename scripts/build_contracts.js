#!/usr/bin/env node
// Compile the project's Solidity contracts with the pinned solc-js (package.json) and write
// deterministic artifacts to autopay/devtools/artifacts/<Name>.json.
//
// Fully offline: solc-js ships its compiler (soljson.js) inside the npm package.
//
//   node scripts/build_contracts.js           # (re)write the artifacts
//   node scripts/build_contracts.js --check   # recompile; exit 1 if a committed artifact differs
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const solc = require('solc');

const ROOT = path.resolve(__dirname, '..');
const OUT_DIR = path.join(ROOT, 'autopay', 'devtools', 'artifacts');

// One entry per deployable contract: [source file relative to the repo root, contract name].
const CONTRACTS = [
  ['contracts/AutoPayUSD.sol', 'AutoPayUSD'],
  ['contracts/AutoPayMulticall.sol', 'AutoPayMulticall'],
];

// Pinned compiler settings. Changing any of these changes the bytecode: rebuild and commit.
const EVM_VERSION = 'cancun';
const OPTIMIZER_RUNS = 200;

function compile(sourcePath, contractName) {
  const content = fs.readFileSync(path.join(ROOT, sourcePath), 'utf8');
  const input = {
    language: 'Solidity',
    sources: { [sourcePath]: { content } },
    settings: {
      optimizer: { enabled: true, runs: OPTIMIZER_RUNS },
      evmVersion: EVM_VERSION,
      // No metadata hash in the bytecode: the output does not depend on paths or comments'
      // whitespace beyond what the compiler itself sees.
      metadata: { bytecodeHash: 'none' },
      outputSelection: {
        [sourcePath]: { [contractName]: ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] },
      },
    },
  };
  // No import callback: contracts must be self-contained (nothing is fetched or read implicitly).
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const diagnostics = output.errors || [];
  const errors = diagnostics.filter((d) => d.severity === 'error');
  for (const d of diagnostics) {
    process.stderr.write((d.formattedMessage || d.message) + '\n');
  }
  if (errors.length > 0) {
    throw new Error(`compilation of ${sourcePath} failed with ${errors.length} error(s)`);
  }
  const compiled = output.contracts[sourcePath][contractName];
  if (!compiled) {
    throw new Error(`contract ${contractName} not found in ${sourcePath}`);
  }
  const artifact = {
    contractName,
    sourcePath,
    abi: compiled.abi,
    bytecode: '0x' + compiled.evm.bytecode.object,
    deployedBytecode: '0x' + compiled.evm.deployedBytecode.object,
    compiler: solc.version(),
    evmVersion: EVM_VERSION,
    optimizer: { enabled: true, runs: OPTIMIZER_RUNS },
    sourceSha256: crypto.createHash('sha256').update(content, 'utf8').digest('hex'),
  };
  return JSON.stringify(artifact, null, 2) + '\n';
}

function main(argv) {
  const check = argv.includes('--check');
  const unknown = argv.filter((a) => a !== '--check');
  if (unknown.length > 0) {
    process.stderr.write(`unknown argument(s): ${unknown.join(' ')}\nusage: build_contracts.js [--check]\n`);
    return 2;
  }
  let stale = 0;
  for (const [sourcePath, contractName] of CONTRACTS) {
    const text = compile(sourcePath, contractName);
    const outPath = path.join(OUT_DIR, `${contractName}.json`);
    const rel = path.relative(ROOT, outPath);
    if (check) {
      const current = fs.existsSync(outPath) ? fs.readFileSync(outPath, 'utf8') : null;
      if (current !== text) {
        stale += 1;
        process.stderr.write(
          `${rel} is ${current === null ? 'missing' : 'stale'}; run \`npm run build:contracts\`\n`,
        );
      } else {
        process.stdout.write(`${rel} is up to date (solc ${solc.version()})\n`);
      }
    } else {
      fs.mkdirSync(OUT_DIR, { recursive: true });
      fs.writeFileSync(outPath, text);
      process.stdout.write(`wrote ${rel} (solc ${solc.version()}, evm ${EVM_VERSION})\n`);
    }
  }
  return stale > 0 ? 1 : 0;
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (err) {
  process.stderr.write(`${err.message}\n`);
  process.exitCode = 1;
}
