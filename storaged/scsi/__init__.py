"""The SCSI command set of a storaged logical unit (SPC-4 / SBC-3), independent of the transport.

- ``types``   ScsiCommand / ScsiResult / Nexus: what a transport hands over and gets back
- ``target``  ScsiTarget: LUN routing, REPORT LUNS, absent LUNs, reset and nexus hooks
- ``lu``      LogicalUnit: identity, unit attentions, reservations, the common command gate
- ``ops``     the opcode table entries (dispatch + REPORT SUPPORTED OPERATION CODES data)
- ``spc``     INQUIRY, REQUEST SENSE, MODE SENSE/SELECT, RSOC, RTPG, SPC-2 RESERVE/RELEASE
- ``sbc``     the SBC opcode table; its handlers are in ``sbc_rw`` (reads, writes, verify, COMPARE
              AND WRITE), ``sbc_provisioning`` (WRITE SAME, UNMAP, GET LBA STATUS) and ``sbc_medium``
              (capacity, cache sync, start/stop)
- ``pr``      persistent reservations
- ``xcopy``   EXTENDED COPY (LID1) and RECEIVE COPY RESULTS
- ``vpd``     standard INQUIRY data and VPD pages
- ``modes``   mode pages
- ``sense``   failure reasons and fixed/descriptor sense data
"""
