//! Image sources: an OCI registry client and an OCI image layout reader behind one BlobSource trait.
