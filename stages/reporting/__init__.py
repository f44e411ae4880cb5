"""What people read: the charts, the detection pictures, the model card (markdown and HTML) and the summary numbers.

- ``charts``: the offline chart page template DVC's plots use (``python -m stages.reporting.charts``);
- ``pictures``: predictions drawn on validation images, and the confusion matrix;
- ``card_sections``: the model card's tables, notes and headline cells, from the stages' records;
- ``card_markdown``: the model card's markdown, those sections in order;
- ``card_html``: the model card as a self-contained HTML page;
- ``summary``: the few numbers each metrics file leads with.

Imports the core only; never a stage entry (the layers in pyproject.toml, checked by ``make lint``).
"""
