"""One experiment's numbers and pictures: the self-contained HTML report (``html``) and the
Caffe training log parser with its loss / accuracy curves (``caffelog``)."""
