// AutoLoRA accordion: what the settings will do, shown before generating.
// - a notice when AutoLoRA is enabled but the tab's prompt has no <lora:...> tag (it would stand aside);
// - next to a CFG control left at 0, the scale it follows ("= CFG Scale 7").
(function() {
    const TABS = ["txt2img", "img2img"];
    const LORA_TAG = /<lora:[^>]+>/i;

    // AutoLoRA control -> [[the generation's control it follows when 0, its label], ...], first found wins;
    // the fields' table, which the tab's notice element carries (lib_autolora/webui/accordion.py)
    function followTable(tab) {
        const holder = gradioApp().querySelector(`#autolora_${tab}_notice [data-follows]`);
        return holder ? JSON.parse(holder.dataset.follows) : {};
    }

    function numberIn(elemId) {
        const input = gradioApp().querySelector(`#${elemId} input[type=number]`);
        return input ? input.value : null;
    }

    // A line of text that AutoLoRA keeps at the end of a control, made on first use.
    function line(control, className) {
        let element = control.querySelector(`:scope > .${className}`);
        if (!element) {
            element = document.createElement("div");
            element.className = className;
            control.appendChild(element);
        }
        return element;
    }

    function updateNotice(tab, accordion) {
        const notice = gradioApp().getElementById(`autolora_${tab}_notice`);
        if (!notice) return;
        const enabled = accordion.querySelector(".input-accordion-checkbox");
        const prompt = gradioApp().querySelector(`#${tab}_prompt textarea`);
        const missing = Boolean(enabled && enabled.checked && prompt && !LORA_TAG.test(prompt.value));
        const text = line(notice, "autolora-notice");
        text.textContent = missing ?
            "No <lora:...> tag in the prompt: AutoLoRA will stand aside and the image is generated as usual." : "";
        text.hidden = !missing;
    }

    function updateEffectiveScales(tab) {
        for (const [name, sources] of Object.entries(followTable(tab))) {
            const control = gradioApp().getElementById(`autolora_${tab}_${name}`);
            if (!control) continue;
            const source = sources.find(([id]) => numberIn(`${tab}_${id}`) !== null);
            const follows = Number(numberIn(`autolora_${tab}_${name}`)) === 0 && source;
            const text = line(control, "autolora-effective");
            text.textContent = follows ? `= ${source[1]} ${numberIn(`${tab}_${source[0]}`)}` : "";
            text.hidden = !follows;
        }
    }

    function update() {
        for (const tab of TABS) {
            const accordion = gradioApp().getElementById(`autolora_${tab}_enabled`);
            if (!accordion) continue;
            updateNotice(tab, accordion);
            updateEffectiveScales(tab);
        }
    }

    onUiLoaded(function() {
        // typing, sliders and the enable box fire these; pasted infotext and other programmatic changes
        // reach the page as UI updates
        gradioApp().addEventListener("input", update);
        gradioApp().addEventListener("change", update);
        gradioApp().addEventListener("click", () => setTimeout(update, 0));
        update();
    });
    onAfterUiUpdate(update);
})();
