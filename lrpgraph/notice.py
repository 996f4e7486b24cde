"""The patent notice shown where users look: README (the package's long description), `lrpgraph --help` and
the footer of every page lrpgraph writes. tests/test_notice.py keeps the copies in step with these strings."""

PATENT_NOTICE = (
    "LRP is patented: the relevance redistribution that lrpgraph's LRP composites compute is covered by the "
    "patent family WO 2016/150472 of Fraunhofer-Gesellschaft and TU Berlin (US 12,061,966 B2, EP 3271863 B1, "
    "CA 2979579 and members in KR, JP, CN, BR and RU), and the MIT licence of this code grants no rights under "
    "third parties' patents. The owners describe LRP as free of charge for personal and scientific purposes "
    "only; commercial users should check with them, or use the gradient-family methods (gradient, "
    "input-x-gradient, ig, guided-ig, smoothgrad, smoothtaylor), which are not LRP."
)

PATENT_FOOTER = ("LRP is covered by patents of Fraunhofer-Gesellschaft and TU Berlin (WO 2016/150472); their owners "
                 "describe it as free for personal and scientific use. See 'Licence and patents' in lrpgraph's README.")
