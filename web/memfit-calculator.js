// <memfit-calculator> — the calculator as a custom element for documentation pages:
//   <script type="module" src="memfit-calculator.js"></script>
//   <memfit-calculator model="resnet18" batch="32" gpu="RTX 3090"></memfit-calculator>
// Attributes: view="verdict" (model, settings, verdict and breakdown only), model (a builtin model name), batch, dtype (fp32|fp16|bf16), optimizer (sgd, sgd-momentum,
// adam, adamw, adagrad, rmsprop), gpu (a catalog name or a size like 24GiB) and, for a Hugging Face config (model="llama-3.1-8b"): seq, attention (sdpa|eager), ft (full|lora|qlora),
// rank (LoRA r); for any model: ckpt (checkpoint globs), ckpt-impl (reentrant|non-reentrant), accum (micro-batches).
// Your own model text instead of a builtin one: put it in a child <script type="text/memfit">...</script>. The element fills its
// container's width; its styles live in a shadow root, so the host page's CSS does not leak in.
import { mountCalculator, DEFAULTS } from './calculator.js';

const cssUrl = new URL('memfit.css', import.meta.url).href;

class MemfitCalculator extends HTMLElement {
  static get observedAttributes() { return ['model', 'batch', 'dtype', 'optimizer', 'gpu', 'seq', 'attention', 'ft', 'rank', 'ckpt', 'ckpt-impl', 'accum']; }  // view: read once

  stateFromAttributes() {
    const st = {};
    const a = (k) => this.getAttribute(k);
    if (a('model')) st.preset = a('model');
    const inline = this.querySelector('script[type="text/memfit"]');
    if (inline) { st.text = inline.textContent.replace(/^\s*\n/, '').replace(/\s+$/, '\n'); st.preset = null; }
    const b = Number(a('batch'));
    if (Number.isInteger(b) && b >= 1) st.batch = b;
    if (a('dtype')) st.dtype = a('dtype');
    if (a('optimizer')) st.optimizer = a('optimizer');
    if (a('gpu')) st.gpu = a('gpu');
    const whole = (k) => (/^\d+$/.test(a(k) || '') && Number(a(k)) >= 1 ? Number(a(k)) : null);
    if (whole('seq')) st.seq = whole('seq');
    if (whole('rank')) st.rank = whole('rank');
    if (whole('accum')) st.accum = whole('accum');
    if (a('attention')) st.attention = a('attention');
    if (a('ft')) st.ft = a('ft');
    if (a('ckpt')) st.ckpt = a('ckpt');
    if (a('ckpt-impl')) st.ckptImpl = a('ckpt-impl');
    return st;
  }

  connectedCallback() {
    if (this.calc) return;
    const shadow = this.attachShadow({ mode: 'open' });
    shadow.innerHTML = `<style>:host{display:block;width:100%;max-width:100%}</style><link rel="stylesheet" href="${cssUrl}">`;
    this.calc = mountCalculator(shadow, { mode: this.getAttribute('view') === 'verdict' ? 'verdict' : 'compact', state: { ...DEFAULTS, ...this.stateFromAttributes() } });
  }

  attributeChangedCallback(name, oldValue, value) {
    if (!this.calc || oldValue === value) return;
    const st = this.stateFromAttributes();
    this.calc.ready.then(() => this.calc.setState(st));
  }
}

if (!customElements.get('memfit-calculator')) customElements.define('memfit-calculator', MemfitCalculator);
